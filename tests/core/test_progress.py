"""Progress off a terminal is plain lines (issue 25): no tqdm ``\\r`` redraws in a log file."""

import io

from minirccn.core.progress import PlainProgress, progress_bar


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_off_a_terminal_progress_is_a_few_plain_lines():
    stream = io.StringIO()  # isatty() is False, as for nohup / CI / 2> log
    bar = progress_bar(range(1000), desc="train", unit="step", stream=stream)
    assert isinstance(bar, PlainProgress)
    for i in bar:
        if i % 10 == 0:
            bar.set_postfix({"objectness": "0.123"}, refresh=False)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10  # every tenth of the loop, the last one at the end
    assert lines[0].startswith("train: 100/1000 step (10%)") and "objectness=0.123" in lines[0]
    assert lines[-1].startswith("train: 1000/1000 step (100%)")


def test_off_a_terminal_a_line_comes_every_n_seconds_too():
    clock, stream = Clock(), io.StringIO()
    bar = PlainProgress(range(50), desc="eval", unit="img", stream=stream, every_steps=1000,
                        every_seconds=30.0, clock=clock)
    for i in bar:
        clock.t += 4.0  # 4 s per image: a line every 8th image (32 s)
    lines = stream.getvalue().splitlines()
    assert [int(line.split()[1].split("/")[0]) for line in lines] == [8, 16, 24, 32, 40, 48, 50]


def test_an_interrupted_loop_ends_with_where_it_stopped():
    stream = io.StringIO()
    bar = progress_bar(range(100), desc="train", stream=stream)
    for i in bar:
        if i == 14:
            bar.close()
            break
    assert stream.getvalue().splitlines()[-1].startswith("train: 14/100")


def test_disabled_progress_prints_nothing_but_messages_still_go_out():
    stream = io.StringIO()
    bar = progress_bar(range(30), desc="x", enabled=False, stream=stream)
    for i in bar:
        pass
    bar.write("step 30: validation mAP@0.5 0.5")
    assert stream.getvalue() == "step 30: validation mAP@0.5 0.5\n"


def test_on_a_terminal_it_is_a_tqdm_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    from tqdm import tqdm
    bar = progress_bar(range(3), desc="x", stream=Tty())
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]


def test_a_training_run_logged_to_a_file_has_no_carriage_returns(tmp_path, capsys):
    from minirccn.app.cli import main
    fast = ["backbone_stages=[[4, 1, true], [8, 1, true], [8, 1, false]]", "rpn_channels=8",
            "representation_size=16", "roi_output_size=3", "min_size=64", "max_size=64"]
    sets = [a for f in fast for a in ("--set", f)]
    status = main(["train", "--iters", "4", "--eval-split", "", "--out", str(tmp_path / "r")] + sets)
    err = capsys.readouterr().err
    assert status == 0, err
    assert "\r" not in err and "train: 4/4 step (100%)" in err
