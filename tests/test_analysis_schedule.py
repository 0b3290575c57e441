"""SPD schedule rows (specdiff.analysis.schedule) against the paper's numbers and hand counts."""

import pytest

from specdiff.analysis.schedule import schedule_row, schedule_rows, schedule_table, snr_plot
from specdiff.plans import SPECTRA, flow_times, flux_times


def test_flux_row_matches_the_paper_and_hand_counts():
    times = flux_times(50, 4096)
    r = schedule_row(times, (128, 128), (0.5, 1.0), "flux", 0.01)
    # SPD's FLUX setting: switch at step 18, t* = 0.853 (methods.md section 1)
    assert r["switch_steps"] == [18]
    st0, st1 = r["stages"]
    assert st0["t_star"] == pytest.approx(0.853, abs=1e-3) and st1["t_star"] is None
    assert (st0["grid"], st0["evaluations"], st1["grid"], st1["evaluations"]) == \
        ([64, 64], 18, [128, 128], 32)
    # the shifted entry time t_new = rho t / (1 + (rho - 1) t) with rho = 2 (Eq. 5-6)
    t = st0["t_end"]
    assert st1["t_start"] == st0["t_new"] == pytest.approx(2 * t / (1 + t), abs=1e-12)
    assert st0["t_end"] == float(times[18])
    # cost in full-resolution evaluations: 18 quarter-size + 32 full, over 50
    assert r["cost_ratio_tokens"] == pytest.approx((18 / 4 + 32) / 50)
    assert r["cost_ratio_attention"] == pytest.approx((18 / 16 + 32) / 50)
    assert r["speedup_tokens"] == pytest.approx(50 / (18 / 4 + 32))


def test_rows_table_and_respace():
    times = flow_times(20, 1.0)
    rows = schedule_rows(times, (64, 64), (0.25, 0.5, 1.0), (100.0, 2.0), (0.05, 0.1))
    assert [r["delta"] for r in rows] == [0.05, 0.1]
    lines = schedule_table(rows).splitlines()
    assert len(lines) == 2 + 2 * 3  # header, rule, three stages per delta
    sw = rows[0]["switch_steps"]
    assert lines[2].startswith(f"| 0.05 | 0 | 16x16 | {sw[0]} |")
    assert lines[4].endswith(f"{rows[0]['cost_ratio_tokens']:.3f} / "
                             f"{rows[0]['cost_ratio_attention']:.3f} | "
                             f"{rows[0]['speedup_tokens']:.2f}x / {rows[0]['speedup_attention']:.2f}x |")
    # respace finds its switches on regridded times: no global switch step, still a table
    (resp,) = schedule_rows(times, (64, 64), (0.5, 1.0), (100.0, 2.0), (0.05,), continuation="respace")
    assert resp["switch_steps"] == [] and "| 0.05 | 0 | 32x32 |" in schedule_table([resp])
    with pytest.raises(ValueError, match="delta"):
        schedule_row(times, (64, 64), (0.5, 1.0), (100.0, 2.0), 1.5)


def test_snr_plot_writes_a_png(tmp_path):
    times = flux_times(50, 4096)
    rows = schedule_rows(times, (128, 128), (0.5, 1.0), "flux", (0.01,))
    snr_plot(tmp_path / "snr.png", SPECTRA["flux"], (128, 128), (0.5, 1.0), rows)
    assert (tmp_path / "snr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
