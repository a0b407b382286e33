"""The fault benchmark's printed summary and PNG timeline, both drawn from its report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.nemesis import Fault

COLOURS = {
    "kill": "tab:red",
    "pause": "tab:orange",
    "partition": "tab:purple",
    "partition-dispatcher": "tab:blue",
    "restart-all": "tab:brown",
    "restart": "tab:pink",
    "repair": "tab:cyan",
    "lag": "tab:olive",
    "reshard": "tab:gray",
    "membership": "tab:green",
}


def plot(series: dict[str, list[int]], faults: list[Fault], path: Path) -> None:
    """Completed operations per second by outcome (``series``), with each fault's window shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    seconds = len(series["ok"])
    figure, axis = plt.subplots(figsize=(12, 4.5))
    for fault in faults:
        axis.axvspan(fault.start, fault.end, color=COLOURS[fault.kind], alpha=0.18, lw=0)
    for name, style in (
        ("ok", "tab:green"),
        ("unknown", "tab:gray"),
        ("fail", "tab:blue"),
        ("error", "black"),
    ):
        if any(series[name]):
            axis.plot(range(seconds), series[name], label=f"{name} ops/s", color=style)
    handles, _ = axis.get_legend_handles_labels()
    handles += [
        Patch(color=colour, alpha=0.3, label=kind)
        for kind, colour in COLOURS.items()
        if any(f.kind == kind for f in faults)
    ]
    axis.set_xlabel("seconds")
    axis.set_ylabel("operations per second")
    axis.set_title("docraft fault benchmark: completed operations, fault windows shaded")
    axis.legend(handles=handles, loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _lost(loss: dict[str, Any]) -> str:
    write, seen = loss["write"], loss["observed_by"]
    return (
        f"  key {write['key']}: {write['kind']} of {write['value']} acknowledged at {write['complete']:.2f}s,"
        f" then a {seen['kind']} at {seen['invoke']:.2f}s found {seen['output']}"
    )


def _by(served: dict[str, Any] | None) -> str:
    if not served:
        return ""
    return f" by {served.get('replica')} ({served.get('role')}, term {served.get('term')})"


def _counter(verdict: dict[str, Any]) -> str:
    evidence = "; ".join(
        f"{e['key']} (+{e['by']}) answered {e['value']} at {_seconds(e['acknowledged_at'])}{_by(e['served_by'])}:"
        f" {e['why']}"
        for e in verdict["evidence"][:4]
    )
    return (
        f"  counter {verdict['counter']}: final {verdict['final']}, acknowledged {verdict['acknowledged']},"
        f" unknown {verdict['unknown']}" + (f"; {evidence}" if evidence else "")
    )


def _placement(placement: dict[str, Any]) -> str:
    """How many keys were checked on one owner each, and how many stale reads elsewhere were refused."""
    problems = len(placement["problems"])
    return (
        f"placement: {len(placement['keys'])} keys, each on one shard: {'yes' if not problems else 'NO'};"
        f" {placement['refusals_checked']} stale reads sent where a key is not owned"
        + (f"; {problems} problems" if problems else ", all refused")
    )


def _spread(spread: dict[str, Any], value: str) -> str:
    """One statistic of a ``Spread`` (``median`` or ``max``), with how many never completed."""
    never = f" +{spread['missing']} never" if spread["missing"] else ""
    return ("-" if spread[value] is None else f"{spread[value]:.2f}") + never


def fault_table(faults: list[dict[str, Any]]) -> list[str]:
    """One row per fault: when, what, which shard and replica, whether it took the leader, new leader seen, next
    write, catch-ups."""
    rows = [
        f"  {'at':>7}  {'kind':<21} {'shard':<5} {'target':<7} {'leader':<6} {'new leader':>10} {'next write':>10}"
        "  catch-up"
    ]
    for fault in faults:
        catch_up = " ".join(f"{name} {'never' if t is None else f'{t:.2f}s'}" for name, t in fault["catch_up"].items())
        rows.append(
            f"  {fault['start']:>6.2f}s  {fault['kind']:<21} {fault['shard']:<5} {fault['target']:<7} "
            f"{'yes' if fault['leader'] else 'no':<6} {_seconds(fault['elected']):>10}"
            f" {_seconds(fault['failover']):>10}  {catch_up or '-'}"
        )
    return rows


def timings_table(timings: dict[str, dict[str, Any]]) -> list[str]:
    """One row per fault kind: new leader and failover (leader faults), next write after others, catch-up max."""
    rows = [
        f"  {'kind':<21} {'faults':>6} {'leader':>6} {'new leader median':>17} {'failover median':>15}"
        f" {'failover max':>12} {'next write max (others)':>23} {'catch-up max':>12}"
    ]
    for kind, row in timings.items():
        failover = row["failover"]
        rows.append(
            f"  {kind:<21} {row['faults']:>6} {failover['count']:>6} {_spread(row['election'], 'median'):>17}"
            f" {_spread(failover, 'median'):>15}"
            f" {_spread(failover, 'max'):>12} {_spread(row['next_write_after_other_faults'], 'max'):>23}"
            f" {_spread(row['catch_up'], 'max'):>12}"
        )
    return rows


def target_lines(report: dict[str, Any]) -> list[str]:
    """Each target with what was measured and PASS, FAIL or n/a."""
    how = "enforced" if report["targets_enforced"] else "not enforced; --targets makes a miss fail the run"
    lines = [f"targets ({how}):"]
    for target in report["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a (not measured this run)"}[target["passed"]]
        never = f", {target['missing']} never" if target["missing"] else ""
        lines.append(
            f"  {target['name']} under {target['limit']:.2f}s: {_seconds(target['measured'])}{never} {verdict}"
        )
    return lines


def summary(report: dict[str, Any], path: Path) -> str:
    """The printed summary: outcomes, increments, faults and their timings, lost writes, targets, checks."""
    faults = ", ".join(
        f"{kind} " + " ".join(f"{n} {outcome}" for outcome, n in outcomes.items())
        for kind, outcomes in report["fault_counts"].items()
    )
    snapshots = report["snapshots_written"]
    increments = report["increments"]
    lines = [
        "operations: " + ", ".join(f"{k} {v}" for k, v in report["operations"].items()),
        f"increments: {increments['sent']} sent in {increments['attempts']} attempts;"
        f" {increments['acknowledged']} acknowledged ({increments['acknowledged_after_retries']} after retries,"
        f" {increments['acknowledged_after_healing']} only after healing), {increments['unknown']} unknown,"
        f" {increments['failed']} failed; double applies {report['double_applied']},"
        f" lost increments {report['lost_increments']}",
        *(_counter(c) for c in report["counters"] if c["lost"] or c["double_applied"]),
        f"faults: {faults or 'none'}",
        *(
            f"  {f['kind']} at {f['start']:.2f}s on {f['target']}: {f['outcome']}: {f['detail']}"
            for f in report["faults"]
            if f["outcome"] != "done"
        ),
        "per fault (seconds since the start; next write: from the fault to the next successful write):",
        *fault_table(report["faults"]),
        "per kind (seconds; failover over faults that took the leader):",
        *timings_table(report["timings"]),
        f"snapshots written (at least): {sum(snapshots.values())} ("
        + ", ".join(f"{name} {n}" for name, n in snapshots.items())
        + ")",
        f"lost writes: {report['lost_write_count']}",
        _placement(report["placement"]),
        *(f"  {problem}" for problem in report["placement"]["problems"][:5]),
        *(_lost(loss) for loss in report["lost_writes"][:3]),
        *(f"unexpected answer ({n}x): {answer}" for answer, n in list(report["errors"].items())[:3]),
        f"recovery after healing: {_seconds(report['recovery_seconds'])}",
        *target_lines(report),
        "checks: " + ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in report["checks"].items()),
        f"{'PASS' if report['passed'] else 'FAIL'}; report {path} and {path.with_suffix('.png')}",
    ]
    return "\n".join(lines)


def rounded(value: Any, digits: int = 3) -> Any:
    """``value`` (a report, or any JSON value) with every float rounded to ``digits`` places (milliseconds)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(item, digits) for item in value]
    return value
