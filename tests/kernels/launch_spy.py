"""A stand-in for a Triton kernel that records each launch's arguments, then launches it: the tests that
check a kernel is handed the caller's own tensors (no copy) and their strides use it."""


class LaunchSpy:
    def __init__(self, kernel):
        self.kernel, self.calls = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((args, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch
