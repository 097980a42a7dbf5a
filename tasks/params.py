"""Run and sweep parameters: the one place where defaults, presets and validation live."""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.errors import InputError

MAX_SAMPLES = 10_000_000_000
MAX_EPOCHS = 1_000_000
MAX_SEED = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
# |N(0, 1)| exceeds 10 with probability 1.5e-23 per draw, so never in MAX_SAMPLES draws (7 is
# exceeded with probability 2.6e-12 per draw: a 3 % chance in 10^10 draws).
NOISE_BOUND = 10.0
# y is computed in float32 from float32 x and coefficients, rounding at most five times by up
# to 2^-24 each: data bounded by this stay finite.
_FLOAT32_SAFE = FLOAT32_MAX * (1 - 2**-20)


class Method(StrEnum):
    """A gradient-descent variant."""

    bgd = "bgd"
    sgd = "sgd"
    minibatch = "minibatch"


Engine = Literal["fast", "reference"]
DType = Literal["float32", "float64"]
Device = Literal["cpu", "cuda"]

# Presets override the defaults below for every field the caller did not set.
PRESETS: dict[str, dict[str, Any]] = {
    # The defaults: the tutorial's data, start and BGD, with SGD and mini-batch step sizes
    # inside their stability bounds so the comparison is meaningful.
    "default": {},
    # The tutorial's code as written: step size 0.1 for both methods, SGD diverges.
    "tutorial": {"methods": [Method.bgd, Method.sgd], "sgd_lr": 0.1},
}


class DataSpec(BaseModel):
    """How a synthetic data set is drawn: y = slope * x + intercept + noise_std * N(0, 1).

    Built from a run's options (SharedParams.data_spec_for), which hold the defaults.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, extra="forbid")

    n_samples: int = Field(ge=2, le=MAX_SAMPLES)
    x_start: float
    x_stop: float
    slope: float
    intercept: float
    noise_std: float = Field(ge=0.0)
    seed: int = Field(ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _check_range(self) -> DataSpec:
        if not self.x_start < self.x_stop:
            raise ValueError(f"x_start ({self.x_start}) must be below x_stop ({self.x_stop})")
        return self

    @model_validator(mode="after")
    def _check_float32_range(self) -> DataSpec:
        x_max = max(abs(self.x_start), abs(self.x_stop))
        y_max = abs(self.slope) * x_max + abs(self.intercept) + NOISE_BOUND * self.noise_std
        if max(x_max, y_max) > _FLOAT32_SAFE:
            raise ValueError(
                f"the synthetic data would leave float32's range (|x| up to {x_max:.3g}, |y| up "
                f"to {y_max:.3g}, float32 ends at {FLOAT32_MAX:.3g}); lower --x-start/--x-stop, "
                "--slope, --intercept or --noise-std"
            )
        return self


class MethodSpec(BaseModel):
    """Everything one training run of one method depends on, besides the data.

    Built from a run's options (SharedParams.method_spec_for), which hold the defaults.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, extra="forbid")

    method: Method
    lr: float = Field(gt=0.0)
    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    w0: float
    b0: float
    batch_size: int = Field(ge=1)
    shuffle: bool
    shuffle_seed: int = Field(ge=0)
    dtype: DType
    engine: Engine
    device: Device


class SharedParams(BaseModel):
    """The options a single run and a sweep have in common: synthetic data, training, output."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", validate_default=True)

    # data
    n_samples: int = Field(100, ge=2, le=MAX_SAMPLES, description="Number of points.")
    x_start: float = Field(-5.0, description="First x value (inclusive).")
    x_stop: float = Field(5.0, description="End of the x range (exclusive).")
    slope: float = Field(-5.0, description="True slope.")
    intercept: float = Field(0.0, description="True intercept.")
    noise_std: float = Field(0.4, ge=0.0, description="Standard deviation of the noise.")
    # training
    epochs: int = Field(20, ge=1, le=MAX_EPOCHS, description="Epochs per method.")
    w0: float = Field(-10.0, description="Initial slope w.")
    b0: float = Field(-20.0, description="Initial intercept b.")
    shuffle: bool = Field(False, description="Shuffle the points each epoch (SGD, mini-batch).")
    shuffle_seed: int = Field(0, ge=0, description="Seed of the per-epoch shuffles.")
    dtype: DType = Field("float32", description="Floating-point precision of the data.")
    engine: Engine = Field("fast", description="Training engine: fast kernels or reference.")
    device: Device = Field(
        "cpu",
        description=(
            "Where the reference engine trains bgd and minibatch: cpu, or cuda (a GPU torch "
            "sees); sgd and the fast engine run on the CPU."
        ),
    )
    # where results go, and cache control
    data_dir: str | None = Field(None, description="Output and cache root (default: data/).")
    refresh: bool = Field(False, description="Recompute everything, ignoring cached results.")

    def data_spec_for(self, seed: int) -> DataSpec:
        """The synthetic data set these options describe, drawn with `seed`."""
        fields = {k: getattr(self, k) for k in DataSpec.model_fields if k != "seed"}
        return DataSpec(**fields, seed=seed)

    def method_spec_for(self, method: Method, lr: float, batch_size: int) -> MethodSpec:
        """One method's training run with these options (batch_size: points per update)."""
        return MethodSpec(
            method=method,
            lr=lr,
            epochs=self.epochs,
            w0=self.w0,
            b0=self.b0,
            batch_size=batch_size,
            shuffle=self.shuffle and method is not Method.bgd,
            shuffle_seed=self.shuffle_seed,
            dtype=self.dtype,
            engine=self.engine,
            device="cpu" if method is Method.sgd or self.engine == "fast" else self.device,
        )


class RunParams(SharedParams):
    """All parameters of one comparison run (the flow's single parameter)."""

    preset: str = Field(
        "default",
        description=f"Named preset ({', '.join(PRESETS)}); explicit options override it.",
        json_schema_extra={"enum": list(PRESETS)},  # a dropdown in the UI, checked by deployments
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the noise draw.")
    seed_from_date: bool = Field(
        False,
        description=(
            "Draw the noise with the run's scheduled date (YYYYMMDD, UTC) as its seed, in place "
            "of --seed: each night of a schedule has new data, and re-running a night repeats it."
        ),
    )
    # or the user's own data, in place of the synthetic data set
    data: str | None = Field(
        None,
        description=(
            "Your own Parquet file (a path or any URI pyarrow opens; an s3:// URI takes its "
            "region from ?region= or the AWS configuration) to train on instead of synthetic "
            "data; the synthetic-data options are then unused."
        ),
    )
    x_col: str = Field("x", min_length=1, description="Column of the data file holding x.")
    y_col: str = Field("y", min_length=1, description="Column of the data file holding y.")
    methods: list[Method] = Field(
        [Method.bgd, Method.sgd, Method.minibatch],  # a default, not a factory: the UI shows it
        min_length=1,
        description="Methods to train and compare.",
    )
    bgd_lr: float = Field(0.1, gt=0.0, description="Step size of batch gradient descent.")
    sgd_lr: float = Field(0.01, gt=0.0, description="Step size of per-point SGD.")
    minibatch_lr: float = Field(0.02, gt=0.0, description="Step size of mini-batch descent.")
    batch_size: int = Field(10, ge=1, description="Mini-batch size.")

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

    @field_validator("data")
    @classmethod
    def _absolute_data_path(cls, data: str | None) -> str | None:
        """A local path made absolute, so a run resolves it where it was given; URIs as given."""
        data = (data or "").strip()
        if not data:
            return None
        return data if "://" in data else os.path.abspath(os.path.expanduser(data))

    @model_validator(mode="after")
    def _check_consistency(self) -> RunParams:
        # Synthetic-data options are validated even when `data` replaces them, so removing
        # `data` from a saved deployment never exposes an invalid set of parameters.
        self.data_spec()  # validates the x range
        if self.x_col == self.y_col:
            raise ValueError(f"x_col and y_col are both {self.x_col!r}; name two different columns")
        if self.data is None:
            self.check_rows(self.n_samples)
        return self

    def check_rows(self, rows: int) -> None:
        """Refuse a mini-batch size larger than the data set it is drawn from."""
        if Method.minibatch in self.methods and self.batch_size > rows:
            where = f"the {rows:,} rows of {self.data}" if self.data else f"n_samples ({rows})"
            raise InputError(
                f"batch_size ({self.batch_size}) is larger than {where}; "
                "lower --batch-size or leave out minibatch"
            )

    def data_spec(self) -> DataSpec:
        return self.data_spec_for(self.seed)

    def lr(self, method: Method) -> float:
        """The step size of `method`: its option <method>_lr."""
        return float(getattr(self, f"{method.value}_lr"))

    def method_spec(self, method: Method, rows: int | None = None) -> MethodSpec:
        """One method's training run on a data set of `rows` points (default n_samples)."""
        rows = self.n_samples if rows is None else rows
        self.check_rows(rows)
        batch = {Method.bgd: rows, Method.sgd: 1, Method.minibatch: self.batch_size}
        return self.method_spec_for(method, self.lr(method), batch[method])


ALL_POINTS = "n"  # a batch size meaning "all points": batch gradient descent


def method_for_batch(batch_size: int, n_samples: int) -> Method:
    """The method a batch size means: 1 is SGD, all points BGD, anything between mini-batch."""
    if batch_size == 1:
        return Method.sgd
    return Method.bgd if batch_size >= n_samples else Method.minibatch


class Cell(BaseModel):
    """One point of a sweep's grid: a data set (seed) and a training run (batch and step size)."""

    model_config = ConfigDict(frozen=True)

    seed: int
    batch_size: int
    lr: float
    method: Method

    @property
    def label(self) -> str:
        return f"b{self.batch_size}-lr{self.lr:g}-seed{self.seed}"


class SweepParams(SharedParams):
    """All parameters of one sweep: its grid, and the options of a single run that apply."""

    lrs: list[Annotated[float, Field(gt=0.0)]] = Field(
        default_factory=lambda: [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2],
        min_length=1,
        description="Step sizes to try.",
    )
    batch_sizes: list[Annotated[int, Field(ge=1)] | Literal["n"]] = Field(
        default_factory=lambda: [1, 2, 5, 10, 20, 50, ALL_POINTS],
        min_length=1,
        description="Batch sizes: 1 is SGD, n (all points) is BGD, between is mini-batch.",
    )
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        default_factory=lambda: [0, 1, 2],
        min_length=1,
        description="Seeds of the noise draw, one data set each.",
    )

    @model_validator(mode="after")
    def _resolve_grid(self) -> SweepParams:
        n = self.n_samples
        sizes = [n if size == ALL_POINTS else int(size) for size in self.batch_sizes]
        if max(sizes) > n:
            raise ValueError(
                f"batch size {max(sizes)} is larger than n_samples ({n}); "
                f"lower --batch-sizes or use {ALL_POINTS} for all points"
            )
        self.lrs = sorted(set(self.lrs))
        self.batch_sizes = sorted(set(sizes))  # type: ignore[arg-type]
        self.seeds = list(dict.fromkeys(self.seeds))
        self.data_spec(self.seeds[0])  # validates the data options
        return self

    def data_spec(self, seed: int) -> DataSpec:
        """The data set of one seed."""
        return self.data_spec_for(seed)

    def method_spec(self, lr: float, batch_size: int) -> MethodSpec:
        """The training run of one grid cell (it does not depend on the seed)."""
        return self.method_spec_for(method_for_batch(batch_size, self.n_samples), lr, batch_size)

    def cells(self) -> list[Cell]:
        """Every seed x batch size x step size of the sweep, in that nesting order."""
        return [
            Cell(seed=seed, batch_size=size, lr=lr, method=method_for_batch(size, self.n_samples))
            for seed in self.seeds
            for size in self.batch_sizes
            for lr in self.lrs
        ]
