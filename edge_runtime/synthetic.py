"""Synthetic, physically shaped 3-axis accelerometer signals of a rotating machine.

Pure numpy, no I/O. Used by ``tools/build_models.py`` to train the ``fused`` model's vibration
head and by the daemon's demo and tests to generate serial or replay streams that the bundled
model classifies.

Units are g, axes are (ax, ay, az) with the sensor mounted flat, so gravity is about +1 g on z
(tilted by up to a few degrees). Machine states:

- ``idle``: the machine is off; gravity plus sensor noise (0.01-0.02 g rms) only.
- ``running``: rotating unbalance at a fundamental of 10-14 Hz, 0.2-0.4 g, radial (an ellipse in
  the x/y plane, a little on z), with a second harmonic on x/y, plus noise.
- ``fault``: a larger fundamental (0.5-0.8 g, 9-15 Hz) with a stronger harmonic, an extra
  30-40 Hz component (below the 50 Hz Nyquist limit at 100 Hz) and periodic impulses at 5-9 Hz
  that ring down at 35-45 Hz over a few tens of milliseconds (bearing-fault-like).

Amplitudes, frequencies and phases are drawn per call (per segment of a stream). Within one
segment the signal is a function of absolute time, so it is continuous in phase however the
samples are cut into windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

STATES: tuple[str, ...] = ("idle", "running", "fault")
"""Machine states, in the order of the ``fused`` model's state output."""

SAMPLE_RATE_HZ = 100.0
"""Sample rate the ``fused`` model was trained for."""

WINDOW_SAMPLES = 64
"""Samples per model window (0.64 s at 100 Hz)."""

CHANNELS: tuple[str, ...] = ("ax", "ay", "az")
"""Channel names, in column order."""

FloatArray = npt.NDArray[np.float32]
TimeArray = npt.NDArray[np.float64]

_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class MachineParams:
    """Randomised parameters of one state segment (all amplitudes in g, frequencies in Hz)."""

    state: str
    gravity: tuple[float, float, float]
    noise_g: float
    f0_hz: float = 0.0
    amp_g: float = 0.0
    ellipticity: float = 1.0
    axial_ratio: float = 0.0
    phase: float = 0.0
    h2_ratio: float = 0.0
    h2_phase: float = 0.0
    hf_hz: float = 0.0
    hf_amp_g: float = 0.0
    hf_phase: float = 0.0
    impulse_rate_hz: float = 0.0
    impulse_amp_g: float = 0.0
    impulse_t0: float = 0.0
    ring_hz: float = 0.0
    ring_decay_s: float = 0.0


def state_index(state: str) -> int:
    """Index of ``state`` in :data:`STATES` (``ValueError`` for an unknown state)."""
    try:
        return STATES.index(state)
    except ValueError:
        raise ValueError(f"unknown machine state {state!r}; expected one of {', '.join(STATES)}") from None


def random_gravity(rng: np.random.Generator, max_tilt_deg: float = 3.0) -> tuple[float, float, float]:
    """Gravity vector of a sensor mounted flat, tilted by up to ``max_tilt_deg`` degrees."""
    tilt = math.radians(float(rng.uniform(0.0, max_tilt_deg)))
    azimuth = float(rng.uniform(0.0, _TWO_PI))
    return (
        math.sin(tilt) * math.cos(azimuth),
        math.sin(tilt) * math.sin(azimuth),
        math.cos(tilt),
    )


def draw_params(
    state: str,
    rng: np.random.Generator,
    gravity: tuple[float, float, float] | None = None,
) -> MachineParams:
    """Draw random parameters for one segment in ``state``."""
    state_index(state)
    g = random_gravity(rng) if gravity is None else gravity
    if state == "idle":
        return MachineParams(state=state, gravity=g, noise_g=float(rng.uniform(0.01, 0.02)))
    common = {
        "ellipticity": float(rng.uniform(0.6, 1.0)),
        "axial_ratio": float(rng.uniform(0.05, 0.2)),
        "phase": float(rng.uniform(0.0, _TWO_PI)),
        "h2_phase": float(rng.uniform(0.0, _TWO_PI)),
    }
    if state == "running":
        return MachineParams(
            state=state,
            gravity=g,
            noise_g=float(rng.uniform(0.012, 0.025)),
            f0_hz=float(rng.uniform(10.0, 14.0)),
            amp_g=float(rng.uniform(0.2, 0.4)),
            h2_ratio=float(rng.uniform(0.15, 0.35)),
            **common,
        )
    return MachineParams(
        state=state,
        gravity=g,
        noise_g=float(rng.uniform(0.02, 0.035)),
        f0_hz=float(rng.uniform(9.0, 15.0)),
        amp_g=float(rng.uniform(0.5, 0.8)),
        h2_ratio=float(rng.uniform(0.3, 0.5)),
        hf_hz=float(rng.uniform(30.0, 40.0)),
        hf_amp_g=float(rng.uniform(0.15, 0.3)),
        hf_phase=float(rng.uniform(0.0, _TWO_PI)),
        impulse_rate_hz=float(rng.uniform(5.0, 9.0)),
        impulse_amp_g=float(rng.uniform(0.6, 1.1)),
        impulse_t0=float(rng.uniform(0.0, 1.0)),
        ring_hz=float(rng.uniform(35.0, 45.0)),
        ring_decay_s=float(rng.uniform(0.015, 0.03)),
        **common,
    )


def render(params: MachineParams, t: TimeArray, rng: np.random.Generator) -> FloatArray:
    """Samples ``[len(t), 3]`` (float32, g) of the segment ``params`` at absolute times ``t`` (s)."""
    t = np.asarray(t, dtype=np.float64)
    out = np.empty((t.shape[0], 3), dtype=np.float64)
    out[:] = np.asarray(params.gravity, dtype=np.float64)
    if params.amp_g > 0.0:
        w0 = _TWO_PI * params.f0_hz * t + params.phase
        w2 = 2.0 * (_TWO_PI * params.f0_hz * t) + params.h2_phase
        a, a2 = params.amp_g, params.amp_g * params.h2_ratio
        out[:, 0] += a * np.cos(w0) + a2 * np.cos(w2)
        out[:, 1] += a * params.ellipticity * np.sin(w0) + a2 * np.sin(w2)
        out[:, 2] += a * params.axial_ratio * np.cos(w0)
    if params.hf_amp_g > 0.0:
        hf = params.hf_amp_g * np.sin(_TWO_PI * params.hf_hz * t + params.hf_phase)
        out[:, 0] += hf
        out[:, 2] += 0.6 * hf
    if params.impulse_amp_g > 0.0:
        period = 1.0 / params.impulse_rate_hz
        # time since the most recent impulse (impulses at impulse_t0 * period + k * period)
        since = np.mod(t - params.impulse_t0 * period, period)
        ring = (
            params.impulse_amp_g
            * np.exp(-since / params.ring_decay_s)
            * np.cos(_TWO_PI * params.ring_hz * since)
        )
        out[:, 0] += 0.5 * ring
        out[:, 2] += ring
    out += rng.normal(0.0, params.noise_g, size=out.shape)
    return out.astype(np.float32)


def vibration_samples(
    state: str,
    n: int,
    rng: np.random.Generator,
    rate_hz: float = SAMPLE_RATE_HZ,
    t0: float = 0.0,
) -> FloatArray:
    """``n`` samples ``[n, 3]`` (float32, g) of one freshly drawn segment in ``state``.

    Sample ``i`` is taken at ``t0 + i / rate_hz``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if rate_hz <= 0.0:
        raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
    params = draw_params(state, rng)
    t = t0 + np.arange(n, dtype=np.float64) / rate_hz
    return render(params, t, rng)


def state_at(schedule: Sequence[tuple[float, str]], t: float) -> str:
    """State in force at time ``t`` for a schedule of ``(start_s, state)`` changes.

    Before the first change the first state holds.
    """
    if not schedule:
        raise ValueError("schedule is empty")
    current = schedule[0][1]
    for start, state in sorted(schedule, key=lambda item: item[0]):
        if start <= t:
            current = state
        else:
            break
    return current


def vibration_stream(
    schedule: Sequence[tuple[float, str]],
    duration_s: float,
    rng: np.random.Generator,
    rate_hz: float = SAMPLE_RATE_HZ,
) -> tuple[TimeArray, FloatArray]:
    """A continuous stream with state changes at the scheduled times.

    ``schedule`` holds ``(start_s, state)`` pairs; the first state also covers any time before
    its start. Returns ``(times, samples)``: times ``[n]`` float64 seconds from 0, samples
    ``[n, 3]`` float32 g, with ``n = round(duration_s * rate_hz)``. Each segment draws its own
    parameters and is continuous in phase; the sensor's tilt (gravity) is the same for the
    whole stream.
    """
    if not schedule:
        raise ValueError("schedule is empty")
    if duration_s < 0.0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    if rate_hz <= 0.0:
        raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
    for _, state in schedule:
        state_index(state)
    n = round(duration_s * rate_hz)
    times = np.arange(n, dtype=np.float64) / rate_hz
    samples = np.empty((n, 3), dtype=np.float32)
    gravity = random_gravity(rng)
    ordered = sorted(schedule, key=lambda item: item[0])
    for i, (start, state) in enumerate(ordered):
        lo = 0 if i == 0 else int(np.searchsorted(times, start, side="left"))
        hi = n if i + 1 == len(ordered) else int(np.searchsorted(times, ordered[i + 1][0], side="left"))
        if hi <= lo:
            continue
        params = draw_params(state, rng, gravity=gravity)
        samples[lo:hi] = render(params, times[lo:hi], rng)
    return times, samples
