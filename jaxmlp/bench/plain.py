"""The hand-written plain-JAX program: the simplest fast thing a JAX expert would write.

Pure ``jnp`` functions of a list of (W, b): the 784-200-100-60-30-10 ReLU MLP
(weights truncated normal(0, 0.1) cut at 2 stddev, zero biases, uint8 pixels
scaled by 1/255), SGD at 0.3 on the batch-mean cross-entropy, a fresh
permutation of the training set per epoch. ``program`` is the whole seed run in
one jitted program: an outer ``lax.scan`` over evaluations, each an inner scan
of ``eval_every`` train steps, then the whole test set scored. ``train`` is the
training-only scan the fused throughput is compared with.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

SIZES = (784, 200, 100, 60, 30, 10)
LEARNING_RATE = 0.3


def init_params(key: jax.Array, sizes=SIZES, stddev: float = 0.1) -> list:
    """[(W (a, b), b (b,)), ...] for consecutive ``sizes``."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [(stddev * jax.random.truncated_normal(k, -2.0, 2.0, (a, b)), jnp.zeros(b))
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def logits(params: list, images: jax.Array) -> jax.Array:
    """uint8 images (B, 28, 28) -> logits (B, 10)."""
    x = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def cross_entropy(z: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of logits z (B, C) against integer labels (B,)."""
    return jnp.mean(jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, labels[:, None], 1)[:, 0])


def sgd_step(params: list, images: jax.Array, labels: jax.Array, lr=LEARNING_RATE):
    """One SGD update on a batch: (new params, the batch's loss before the update)."""
    value, grads = jax.value_and_grad(lambda p: cross_entropy(logits(p, images), labels))(params)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), value


def batch_indices(key: jax.Array, num_steps: int, batch_size: int, num_examples: int) -> jax.Array:
    """(num_steps, batch_size) int32: consecutive batches of one permutation per epoch,
    an epoch's last partial batch skipped."""
    per_epoch = num_examples // batch_size
    epochs = -(-num_steps // per_epoch)
    perms = jax.vmap(lambda k: jax.random.permutation(k, num_examples))(jax.random.split(key, epochs))
    return perms[:, :per_epoch * batch_size].reshape(-1, batch_size)[:num_steps].astype(jnp.int32)


def _train(params, images, labels, batches):
    def body(p, idx):
        return sgd_step(p, images[idx], labels[idx])
    return jax.lax.scan(body, params, batches)


train = jax.jit(_train)
"""(params, train images, labels, batches (S, B)) -> (params, losses (S,)): S steps, one scan."""


@functools.partial(jax.jit, static_argnames=("num_steps", "batch_size", "eval_every"))
def program(key, train_images, train_labels, test_images, test_labels, *, num_steps: int,
            batch_size: int = 100, eval_every: int = 100) -> tuple[list, dict]:
    """The whole run from a key and the arrays: (final params, {'train_loss' (num_steps,),
    'test_accuracy', 'test_loss' (num_steps // eval_every + 1,): at step 0 and after each
    ``eval_every`` steps})."""
    init_key, order_key = jax.random.split(key)
    params = init_params(init_key)
    batches = batch_indices(order_key, num_steps, batch_size, train_images.shape[0])

    def test(p):
        z = logits(p, test_images)
        return jnp.mean(jnp.argmax(z, -1) == test_labels), cross_entropy(z, test_labels)

    def chunk(p, idx):
        p, losses = _train(p, train_images, train_labels, idx)
        return p, (losses, *test(p))

    first = test(params)
    params, (losses, acc, tl) = jax.lax.scan(chunk, params, batches.reshape(-1, eval_every, batch_size))
    return params, {"train_loss": losses.reshape(-1),
                    "test_accuracy": jnp.concatenate([first[0][None], acc]),
                    "test_loss": jnp.concatenate([first[1][None], tl])}
