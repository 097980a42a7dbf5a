"""Run parameters: the one place where defaults, presets and validation live."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_SAMPLES = 10_000_000_000
MAX_EPOCHS = 1_000_000


class Method(StrEnum):
    """A gradient-descent variant."""

    bgd = "bgd"
    sgd = "sgd"
    minibatch = "minibatch"


Engine = Literal["fast", "reference"]
DType = Literal["float32", "float64"]

# Presets override the defaults below for every field the caller did not set.
PRESETS: dict[str, dict[str, Any]] = {
    # The defaults: the tutorial's data, start and BGD, with SGD and mini-batch step sizes
    # inside their stability bounds so the comparison is meaningful.
    "default": {},
    # The tutorial's code as written: step size 0.1 for both methods, SGD diverges.
    "tutorial": {"methods": [Method.bgd, Method.sgd], "sgd_lr": 0.1},
}


class DataSpec(BaseModel):
    """How the synthetic data set is generated: y = slope * x + intercept + noise_std * N(0, 1)."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, extra="forbid")

    n_samples: int = Field(100, ge=2, le=MAX_SAMPLES)
    x_start: float = -5.0
    x_stop: float = 5.0
    slope: float = -5.0
    intercept: float = 0.0
    noise_std: float = Field(0.4, ge=0.0)
    seed: int = Field(0, ge=0, le=2**63 - 1)

    @model_validator(mode="after")
    def _check_range(self) -> DataSpec:
        if not self.x_start < self.x_stop:
            raise ValueError(f"x_start ({self.x_start}) must be below x_stop ({self.x_stop})")
        return self


class MethodSpec(BaseModel):
    """Everything one training run of one method depends on, besides the data."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, extra="forbid")

    method: Method
    lr: float = Field(gt=0.0)
    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    w0: float
    b0: float
    batch_size: int = Field(ge=1)
    shuffle: bool = False
    shuffle_seed: int = Field(0, ge=0)
    dtype: DType = "float32"
    engine: Engine = "fast"


class RunParams(BaseModel):
    """All parameters of one comparison run (the flow's single parameter)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", validate_default=True)

    preset: str = Field(
        "default",
        description=f"Named preset ({', '.join(PRESETS)}); explicit options override it.",
    )
    # data
    n_samples: int = Field(100, ge=2, le=MAX_SAMPLES, description="Number of points.")
    x_start: float = Field(-5.0, description="First x value (inclusive).")
    x_stop: float = Field(5.0, description="End of the x range (exclusive).")
    slope: float = Field(-5.0, description="True slope.")
    intercept: float = Field(0.0, description="True intercept.")
    noise_std: float = Field(0.4, ge=0.0, description="Standard deviation of the noise.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the noise draw.")
    # training
    methods: list[Method] = Field(
        default_factory=lambda: [Method.bgd, Method.sgd, Method.minibatch],
        min_length=1,
        description="Methods to train and compare.",
    )
    epochs: int = Field(20, ge=1, le=MAX_EPOCHS, description="Epochs per method.")
    w0: float = Field(-10.0, description="Initial slope w.")
    b0: float = Field(-20.0, description="Initial intercept b.")
    bgd_lr: float = Field(0.1, gt=0.0, description="Step size of batch gradient descent.")
    sgd_lr: float = Field(0.01, gt=0.0, description="Step size of per-point SGD.")
    minibatch_lr: float = Field(0.02, gt=0.0, description="Step size of mini-batch descent.")
    batch_size: int = Field(10, ge=1, description="Mini-batch size.")
    shuffle: bool = Field(False, description="Shuffle the points each epoch (SGD, mini-batch).")
    shuffle_seed: int = Field(0, ge=0, description="Seed of the per-epoch shuffles.")
    dtype: DType = Field("float32", description="Floating-point precision of the data.")
    engine: Engine = Field("fast", description="Training engine: fast kernels or reference.")
    # where results go, and cache control
    data_dir: str | None = Field(None, description="Output and cache root (default: data/).")
    refresh: bool = Field(False, description="Recompute everything, ignoring cached results.")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        name = values.get("preset", "default")
        if name not in PRESETS:
            known = ", ".join(sorted(PRESETS))
            raise ValueError(f"unknown preset {name!r}; choose one of: {known}")
        return {**PRESETS[name], **values}

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, methods: list[Method]) -> list[Method]:
        return list(dict.fromkeys(methods))

    @model_validator(mode="after")
    def _check_consistency(self) -> RunParams:
        self.data_spec()  # validates the x range
        if Method.minibatch in self.methods and self.batch_size > self.n_samples:
            raise ValueError(
                f"batch_size ({self.batch_size}) is larger than n_samples ({self.n_samples})"
            )
        return self

    def data_spec(self) -> DataSpec:
        return DataSpec(**{k: getattr(self, k) for k in DataSpec.model_fields})

    def lr(self, method: Method) -> float:
        return {
            Method.bgd: self.bgd_lr,
            Method.sgd: self.sgd_lr,
            Method.minibatch: self.minibatch_lr,
        }[method]

    def method_spec(self, method: Method) -> MethodSpec:
        batch = {Method.bgd: self.n_samples, Method.sgd: 1, Method.minibatch: self.batch_size}
        return MethodSpec(
            method=method,
            lr=self.lr(method),
            epochs=self.epochs,
            w0=self.w0,
            b0=self.b0,
            batch_size=batch[method],
            shuffle=self.shuffle and method is not Method.bgd,
            shuffle_seed=self.shuffle_seed,
            dtype=self.dtype,
            engine=self.engine,
        )
