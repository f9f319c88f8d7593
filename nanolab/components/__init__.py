"""Built-in components, one module per kind; importing this package registers them all."""

from nanolab.components import attention, mlp, norms, optim, positions  # noqa: F401
