"""The second half of the notebooks on 8 forced host devices (tests/test_notebooks.py runs the
first half and says what is checked): a file of its own, so that ``--dist loadfile`` gives the two
halves to the two workers."""

from test_notebooks import check_half


def test_the_second_half_of_the_notebooks_runs_on_eight_host_devices(tmp_path):
    check_half(tmp_path, 1)
