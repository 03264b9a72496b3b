"""The engine: the loops that drive the methods (the trainer and its protocols), evaluation, the compiled step
and the optimisers. It knows a method only by its hooks (methods.base) and never imports a method file."""
