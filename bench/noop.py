"""Empty work for overhead benchmarks, in a module of its own so workers import it by reference
(a function of the script being run lives in ``__main__`` and would travel by value)."""


def nothing(start: int, end: int, arg: object) -> None:
    pass


def nothing_one(i: int) -> None:
    pass
