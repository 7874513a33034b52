"""Per-layer FLOPs, parameter counts, payloads and memory of the fine-tuned LLM (SPEC §3.3).

All functions take the LLM's catalog shape and broadcast over numpy arrays of sequence
lengths (tokens). Units: FLOPs, parameters, bits, bytes.
"""

from __future__ import annotations

import numpy as np

from mec_gym.catalog import LLMSpec
from mec_gym.config import WorkloadConfig
from mec_gym.model.numeric import as_float, jitable


def frozen_params_per_layer(spec: LLMSpec) -> int:
    """Parameters of one transformer layer (attention Q,K,V,O + MLP), GQA-aware, no biases/norms.

    Q and O are h×h; K and V are h×(kv_heads·head_dim); the MLP has 3 matrices h×ffn when
    gated (SwiGLU) and 2 otherwise. Matches shared/calibration `frozen_params`
    (60,817,408 for the Llama-3.2-1B layer, 7,077,888 for BERT-base).
    """
    attention = 2 * spec.hidden * spec.hidden + 2 * spec.hidden * spec.kv_dim
    mlp = (3 if spec.mlp == "gated" else 2) * spec.hidden * spec.ffn
    return attention + mlp


def trainable_params_per_layer(spec: LLMSpec, workload: WorkloadConfig) -> int:
    """Trainable parameters per layer: LoRA rank-r adapters on Q and V, or the whole layer.

    LoRA on a d_in×d_out matrix adds r·(d_in + d_out) parameters (Hu et al. 2021); the
    calibration's LoRA shapes put adapters on q and v.
    """
    if workload.peft == "full":
        return frozen_params_per_layer(spec)
    r = workload.lora_rank
    return r * (spec.hidden + spec.hidden) + r * (spec.hidden + spec.kv_dim)


def lz24_layer_flops(seq_len: np.ndarray, batch: float, hidden: int) -> np.ndarray:
    """[LZ24] §3 per-layer training cost ψ(d) = 72·B·d·h² + 12·B·d²·h (FLOPs, forward+backward, one batch)."""
    d = np.asarray(seq_len, dtype=np.float64)
    return 72.0 * batch * d * hidden**2 + 12.0 * batch * d**2 * hidden


def forward_flops_per_sequence(spec: LLMSpec, workload: WorkloadConfig, seq_len: np.ndarray) -> np.ndarray:
    """Forward FLOPs of one layer for one sequence of ``seq_len`` tokens (SPEC §3.3).

    Transformer model: c^F = ℓ·2·P_layer + 4·ℓ²·h (attention scores and values; halved for
    causal attention, as in shared/calibration) + ℓ·2·P_trainable for LoRA adapters.
    [LZ24] model: one third of ψ(d)/B (ψ counts forward + 2× backward, Megatron style).
    """
    ell = np.asarray(seq_len, dtype=np.float64)
    if workload.flops_model == "lz24":
        return lz24_layer_flops(ell, workload.batch_max, spec.hidden) / (3.0 * workload.batch_max)
    attention = 4.0 * ell**2 * spec.hidden * (0.5 if spec.causal else 1.0)
    adapters = 0.0 if workload.peft == "full" else 2.0 * ell * trainable_params_per_layer(spec, workload)
    return 2.0 * ell * frozen_params_per_layer(spec) + attention + adapters


def backward_flops_per_sequence(spec: LLMSpec, workload: WorkloadConfig, seq_len: np.ndarray) -> np.ndarray:
    """Backward FLOPs of one layer for one sequence (SPEC §3.3).

    Full fine-tuning: c^B = 2·c^F (activation and weight gradients). PEFT: c^B = c^F + ε,
    activation gradients through the frozen weights plus ε = 4·ℓ·P_adapter for the adapters'
    weight and input gradients (our choice, standard accounting; shared/calibration measures
    LoRA backward at 1.0-1.5× the forward's time). [LZ24]: two thirds of ψ(d)/B.
    """
    forward = forward_flops_per_sequence(spec, workload, seq_len)
    if workload.flops_model == "lz24" or workload.peft == "full":
        return 2.0 * forward
    ell = np.asarray(seq_len, dtype=np.float64)
    return forward + 4.0 * ell * trainable_params_per_layer(spec, workload)


def activation_bits_per_sequence(spec: LLMSpec, workload: WorkloadConfig, seq_len: np.ndarray) -> np.ndarray:
    """Cut-layer activation (and its gradient) payload per sequence: a = ℓ·h·q_act bits (SPEC §3.3)."""
    return sequence_bits(seq_len, spec.hidden, workload.activation_bits)


def token_bits_per_sequence(workload: WorkloadConfig, seq_len: np.ndarray) -> np.ndarray:
    """Raw-token payload of an α = 0 user: ℓ·32 bits per sequence (SPEC §3.3)."""
    return sequence_bits(seq_len, 1, workload.token_bits)


@jitable
def sequence_bits(seq_len: np.ndarray, values_per_token: int, bits_per_value: int) -> np.ndarray:
    """Payload of one sequence of ℓ tokens with ``values_per_token`` values of ``bits_per_value`` bits each:
    ℓ·values·bits (activations: values = h; raw tokens: values = 1)."""
    return as_float(seq_len) * values_per_token * bits_per_value


def adapter_upload_bits_per_layer(spec: LLMSpec, workload: WorkloadConfig) -> float:
    """End-of-round upload of one layer's trained parameters for aggregation: P_trainable·16 bits."""
    return float(trainable_params_per_layer(spec, workload)) * 16.0


def layer_memory_bytes(spec: LLMSpec, workload: WorkloadConfig, sequences: np.ndarray,
                       seq_len: np.ndarray) -> np.ndarray:
    """Device memory one layer needs while training ``sequences`` sequences in flight (SPEC §3.3).

    Frozen weights in fp16 (2 B/param) + trainable parameters with gradients and Adam state
    (16 B/param) + activations kept for backward, ``activation_bytes_per_element``·ℓ·h per
    sequence (Korthikanti et al. 2022: 34 B per element in fp16 with memory-efficient attention).
    GPipe keeps every micro-batch in flight, so ``sequences`` is the round's batch.
    """
    frozen, trainable = weight_state_bytes(spec, workload)
    return training_memory_bytes(frozen, trainable, workload.activation_bytes_per_element, spec.hidden, seq_len,
                                 sequences)


def weight_state_bytes(spec: LLMSpec, workload: WorkloadConfig) -> tuple[float, float]:
    """(frozen, trainable) bytes of one layer's weights: frozen weights in fp16 (2 B/param; none under full
    fine-tuning, where the trainable copy holds them) and trainable parameters with gradients and Adam
    state (16 B/param)."""
    frozen = 0.0 if workload.peft == "full" else 2.0 * frozen_params_per_layer(spec)
    return frozen, 16.0 * trainable_params_per_layer(spec, workload)


@jitable
def training_memory_bytes(frozen_bytes: float, trainable_bytes: float, bytes_per_element: float, hidden: int,
                          seq_len: np.ndarray, sequences: np.ndarray) -> np.ndarray:
    """One layer's training memory, bytes: frozen + trainable state + ``bytes_per_element``·ℓ·h·sequences
    of activations kept for backward (see :func:`layer_memory_bytes`)."""
    activations = bytes_per_element * as_float(seq_len) * hidden * as_float(sequences)
    return frozen_bytes + trainable_bytes + activations
