"""Benchmark jaxmlp against a hand-written plain-JAX program and Görner's 2017 TF1 program.

=============  =================================================================
``suite``      the data, the contenders, interleaved repeats, medians and ratios:
               ``run_default`` (the seed run, any backend), ``run_accelerator``
``plain``      the hand-written plain-JAX program (pure ``jnp``, one ``lax.scan``)
``original``   the 2017 program in ``tf.compat.v1`` (the only TensorFlow import;
               run as a child process, it imports neither JAX nor jaxmlp)
``report``     docs/performance.md rendered from the suites' JSON
=============  =================================================================

Nothing is imported here, so ``python -m jaxmlp.bench.original`` loads no JAX.
"""
