"""Progress on a terminal is a bar; in a log a line per unit of work, never a redraw per batch."""

import io

from robustweights import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_no_redraws_only_the_lines_asked_for():
    log = io.StringIO()
    with progress.bar(total=1000, desc="epoch 1/2", unit="img", stream=log) as b:
        for _ in range(100):
            b.update(10)
            b.set_postfix(loss=0.5)
        b.line("epoch 1/2: test error 9.54%")
    text = log.getvalue()
    assert "\r" not in text and text.count("\n") == 1
    assert text.startswith("epoch 1/2: test error 9.54%, 1000/1000 img, ")
    assert "img/s" in text and "about 0 s left" in text


def test_a_terminal_gets_tqdm_s_bar():
    term = _Terminal()
    b = progress.bar(total=10, desc="sweep", unit="cell", stream=term, mininterval=0)
    for _ in range(10):
        b.update(1)
    b.close()
    assert "\r" in term.getvalue() and "sweep" in term.getvalue()
    assert type(b).__name__ != "Lines"


def test_disabled_is_silent_even_on_a_terminal_and_iterates():
    term = _Terminal()
    b = progress.bar(range(5), desc="x", enabled=False, stream=term)
    assert list(b) == [0, 1, 2, 3, 4] and b.n == 5
    assert term.getvalue() == ""


def test_time_left_is_the_mean_rate_over_what_remains():
    log = io.StringIO()
    b = progress.Lines(total=4, unit="cell", stream=log)
    b.start -= 10.0  # 1 cell in 10 s: 3 left take about 30 s
    b.update(1)
    b.line("grid add-gauss done")
    assert "1/4 cell" in log.getvalue() and "about 30 s left" in log.getvalue()


def test_durations_read_at_a_glance():
    assert [progress.duration(s) for s in (0.4, 59, 61, 3599, 7800)] == [
        "0 s",
        "59 s",
        "1 min 01 s",
        "59 min 59 s",
        "2 h 10 min",
    ]
