"""jaxcl.plots.figure: the one figure helper of the studies' plots."""

import matplotlib.pyplot as plt
import pytest

from jaxcl import plots


def test_figure_writes_the_file_with_its_panels_and_closes_it(tmp_path):
    path = tmp_path / "two.png"
    before = plt.get_fignums()
    with plots.figure(str(path), (6, 3), 2, title="t", title_size=9) as axes:
        assert len(axes) == 2 and axes[0].figure is axes[1].figure
        fig = axes[0].figure
        axes[0].plot([0, 1], [1, 0])
    assert fig.get_suptitle() == "t"
    assert path.stat().st_size > 0 and plt.get_fignums() == before


def test_figure_closes_without_saving_on_an_error(tmp_path):
    path = tmp_path / "broken.png"
    before = plt.get_fignums()
    with pytest.raises(ZeroDivisionError), plots.figure(str(path), (3, 3)) as (ax,):
        ax.plot([0, 1], [0, 1 / 0])
    assert not path.exists() and plt.get_fignums() == before
