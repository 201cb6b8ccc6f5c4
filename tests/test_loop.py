"""The shared step loop: a stop checkpoints the steps done, Ctrl-C keeps them, a finished run leaves its end to the
caller."""

import pytest

from cadis.training.loop import run_steps


def _loop(start=0, end=10, stop_after=None, minutes=60.0):
    taken, saved = [], []

    def step(s):
        taken.append(s)
        return {"s": s}

    stop = None if stop_after is None else (lambda done: done >= stop_after)
    result = run_steps(start, end, step, saved.append, minutes, "test", stop=stop, show=False)
    return result, taken, saved


def test_a_finished_run_takes_every_step_and_leaves_the_end_to_the_caller():
    (done, stopped), taken, saved = _loop(start=3)
    assert (done, stopped) == (10, False) and taken == list(range(3, 10)) and saved == []


def test_a_stop_checkpoints_the_steps_done():
    (done, stopped), taken, saved = _loop(stop_after=4)
    assert (done, stopped) == (4, True) and taken == [0, 1, 2, 3] and saved == [4]


def test_a_stop_on_the_last_step_is_a_finished_run():
    (done, stopped), _, saved = _loop(stop_after=10)
    assert (done, stopped) == (10, False) and saved == []


def test_ctrl_c_checkpoints_the_steps_done_then_propagates():
    saved = []
    with pytest.raises(KeyboardInterrupt):
        run_steps(0, 10, lambda s: (_ for _ in ()).throw(KeyboardInterrupt) if s == 6 else {}, saved.append, 60.0,
                  "test", show=False)
    assert saved == [6]


def test_ctrl_c_before_any_step_or_without_saving_saves_nothing():
    for at, save in ((0, True), (5, False)):
        saved = []
        with pytest.raises(KeyboardInterrupt):
            run_steps(0, 10, lambda s, at=at: (_ for _ in ()).throw(KeyboardInterrupt) if s == at else {},
                      saved.append, 60.0, "test", show=False, save_on_interrupt=save)
        assert saved == []


def test_periodic_checkpoints_follow_the_clock():
    (done, _), _, saved = _loop(end=5, minutes=0.0)  # every step is past a zero-minute interval
    assert done == 5 and saved == [1, 2, 3, 4, 5]
