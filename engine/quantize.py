"""Weight-quantized linear layers: fp8 (torch._scaled_mm, Hopper/Ada) and int8 (torch._int_mm).

Per-tensor scales for weights and a static activation scale, as static fp8/int8 checkpoints
run them: the GEMM reads 1-byte weights and runs on the 8-bit tensor cores. Timings do not
depend on the values, so the scales come from the random weights themselves.
"""

from __future__ import annotations

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn value (OCP FP8 spec)


def fp8_supported(device) -> bool:
    dev = torch.device(device)
    return dev.type == "cuda" and torch.cuda.get_device_capability(dev) >= (8, 9)


class Fp8Linear(nn.Module):
    """y = (x·s_x)(W·s_w)^T + b with W stored as float8_e4m3fn [N, K]."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        scale = w.abs().amax().float().clamp(min=1e-12) / FP8_MAX
        self.register_buffer("weight", (w.float() / scale).to(FP8))
        self.register_buffer("w_scale", scale.reshape(()))
        self.register_buffer("x_scale", torch.ones((), device=w.device))
        self.bias = linear.bias
        self.out_dtype = w.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.is_cuda:
            y = torch._scaled_mm(
                x2.to(FP8),
                self.weight.t(),
                scale_a=self.x_scale,
                scale_b=self.w_scale,
                bias=self.bias,
                out_dtype=self.out_dtype,
            )
        else:  # reference: dequantize
            y = torch.nn.functional.linear(x2, (self.weight.float() * self.w_scale).to(x.dtype), self.bias)
        return y.reshape(*shape[:-1], -1)


class Int8Linear(nn.Module):
    """y = (x_q @ W_q^T) · s_x · s_w with int8 operands and int32 accumulation (torch._int_mm)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        scale = w.abs().amax().float().clamp(min=1e-12) / 127.0
        self.register_buffer(
            "weight_t", (w.float() / scale).round().clamp(-127, 127).to(torch.int8).t().contiguous()
        )
        self.register_buffer("w_scale", scale.reshape(()))
        self.bias = linear.bias
        self.out_dtype = w.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xq = x2.round().clamp(-127, 127).to(torch.int8)
        # _int_mm on CUDA needs more than 16 rows; pad small batches (decode) up to 17
        m = xq.shape[0]
        if xq.is_cuda and m <= 16:
            xq = torch.cat([xq, xq.new_ones((17 - m, xq.shape[1]))])
        acc = torch._int_mm(xq, self.weight_t)[:m] if xq.is_cuda else xq.float() @ self.weight_t.float()
        y = (acc.float() * self.w_scale).to(self.out_dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], -1)


def quantize_linears(
    module: nn.Module, dtype: str, skip: tuple[str, ...] = ("lm_head",), cls: type | None = None
) -> nn.Module:
    """Replace every nn.Linear under `module` (except names in `skip`) by its fp8 or int8 version (or `cls`)."""
    cls = cls or {"fp8": Fp8Linear, "int8": Int8Linear}[dtype]
    for name, child in list(module.named_children()):
        if name in skip:
            continue
        if isinstance(child, nn.Linear):
            setattr(module, name, cls(child))
        else:
            quantize_linears(child, dtype, skip, cls)
    return module
