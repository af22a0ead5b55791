"""The CPU demo, an application on top of the library: ``deepscaler train`` with no arguments.

A tiny model is distilled from a flawed teacher, then GRPO with a verifiable reward takes it beyond that
teacher: :mod:`deepscaler.demo.app` drives it, :mod:`~deepscaler.demo.settings` holds its knobs,
:mod:`~deepscaler.demo.teacher` the flawed demonstrations, :mod:`~deepscaler.demo.warmup` the supervised
warm-up, :mod:`~deepscaler.demo.report` its files and figure.
"""
