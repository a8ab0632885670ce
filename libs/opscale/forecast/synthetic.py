"""A synthetic request-rate series with a daily and a weekly cycle, for tests and demos. Seeded, pure."""

from __future__ import annotations

import numpy as np


def diurnal_weekly_rates(days: int, step_s: float, *, base_rps: float = 100.0, daily_amplitude: float = 0.6,
                         weekend_factor: float = 0.7, noise_cv: float = 0.08, level_drift_cv: float = 0.03,
                         seed: int = 0) -> np.ndarray:
    """Rates (req/s) every `step_s` for `days` days.

    rate = base * (1 + amplitude * sin(day phase)) * (weekend_factor on days 5 and 6 of each week)
           * a slowly wandering level (a random walk with `level_drift_cv` per day, kept within +/-30%)
           * lognormal noise with coefficient of variation `noise_cv`.
    Example: days=14, step_s=300 gives 4,032 points peaking near 160 req/s on weekdays.
    """
    if days < 1 or step_s <= 0:
        raise ValueError(f"need days >= 1 and step_s > 0, got days={days}, step_s={step_s}")
    rng = np.random.default_rng(seed)
    steps_per_day = round(86400 / step_s)
    t = np.arange(days * steps_per_day)
    day_phase = 2 * np.pi * (t % steps_per_day) / steps_per_day
    daily = 1 + daily_amplitude * np.sin(day_phase - np.pi / 2)  # trough at midnight, peak at noon
    weekly = np.where((t // steps_per_day) % 7 >= 5, weekend_factor, 1.0)
    drift_per_step = level_drift_cv / np.sqrt(steps_per_day)
    level = np.exp(np.clip(np.cumsum(rng.normal(0, drift_per_step, len(t))), -0.3, 0.3))
    sigma = np.sqrt(np.log1p(noise_cv ** 2))
    noise = rng.lognormal(-sigma ** 2 / 2, sigma, len(t))
    return base_rps * daily * weekly * level * noise
