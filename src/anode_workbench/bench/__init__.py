"""Memory and speed measurement of gradient methods, models and schedules."""
