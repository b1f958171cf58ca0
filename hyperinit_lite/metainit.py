"""MetaInit (Dauphin & Schoenholz, 2019): a baseline that rescales each weight tensor's norm (Chapter 12).

For a loss ``L`` with gradient ``g = dL/dtheta`` and Hessian ``H``, one gradient step changes the gradient to
``g(theta - g) ~ g - H g``. The *gradient quotient* measures how much the step changes it, entry by entry::

    GQ(theta) = (1/N) sum_i | (g_i - (H g)_i) / (g_i + eps sign(g_i)) - 1 |,

where ``(H g)_i = d/dtheta_i (|g|^2 / 2)`` and ``N`` is the number of parameters. MetaInit minimises ``GQ`` on
random data by changing only the norm ``r = |W|`` of each weight tensor ``W`` (never its direction): the
radial derivative ``dGQ/dr = <W, dGQ/dW> / |W|`` drives sign-gradient descent with momentum on ``r``.
"""
import torch

from .validate import check_positive, check_positive_int


def gradient_quotient(loss, params, eps=1e-5):
    """``GQ = mean_i |(g_i - (Hg)_i) / (g_i + eps sign(g_i)) - 1|`` over all entries of ``params`` (differentiable)."""
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hvp = torch.autograd.grad(sum((g * g).sum() / 2 for g in grads), params, create_graph=True)
    total = sum(((g - h) / (g + eps * torch.where(g >= 0, 1.0, -1.0).detach()) - 1).abs().sum()
                for g, h in zip(grads, hvp))
    return total / sum(p.numel() for p in params)


def metainit_(model, loss_fn, batch_fn, steps=200, lr=0.1, momentum=0.9, eps=1e-5, seed=0, progress=False):
    """Rescale the norm of every trainable weight tensor (``ndim >= 2``) of ``model`` in place to minimise GQ.

    ``batch_fn(generator) -> (inputs, targets)`` draws random data (MetaInit needs no real data). The model is
    put in eval mode (batch norm then uses its reset statistics). Returns the list of GQ values.
    """
    from tqdm.auto import tqdm

    steps, lr = check_positive_int("steps", steps), check_positive("lr", lr)
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    weights = [p for p in params if p.ndim >= 2]
    memory = [0.0] * len(weights)
    history = []
    for _ in tqdm(range(steps), desc="MetaInit", disable=not progress):
        x, y = batch_fn(gen)
        gq = gradient_quotient(loss_fn(model(x), y), params, eps)
        grads = torch.autograd.grad(gq, weights)
        history.append(float(gq.detach()))
        with torch.no_grad():
            for j, (w, g) in enumerate(zip(weights, grads)):
                norm = float(w.norm())
                radial = float(torch.sign((w * g).sum() / norm))
                memory[j] = momentum * memory[j] - lr * radial
                w.mul_((norm + memory[j]) / norm)
    model.train(was_training)
    return history
