#!/usr/bin/env python3
"""Turns a hack/bench.sh results directory into a markdown table (stdout) with berth/containerd ratios and,
with --plots, latency.png and memory.png in the same directory.

Usage: hack/bench-report.py DIR [--plots] [--markdown FILE]
  DIR has run.json and, per runtime (berth, berth-cni, containerd), <runtime>/driver.json (berth-bench) and
  <runtime>/critest/*.json (critest --benchmarking-output-dir). --markdown also writes the table to FILE.
Exits non-zero, naming what is missing, when an expected figure is absent.
"""
import argparse
import json
import os
import sys

NAMES = {"berth": "berth", "berth-cni": "berth (CNI)", "containerd": "containerd"}
CRITEST = [  # file, what the lifecycle is
    ("pod_benchmark_data", "pod"),
    ("container_benchmark_data", "container"),
    ("image_lifecycle_benchmark_data", "image"),
    ("image_listing_benchmark_data", "image list"),
]


def die(msg):
    print(f"bench-report: {msg}", file=sys.stderr)
    sys.exit(1)


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        die(f"cannot read {path}: {e}")


def pct(values, p):
    """Percentile with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def fmt(x, digits=1):
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    r = a / b
    return f"{r:.2f}" if r >= 0.095 else f"{r:.3f}"


class Runtime:
    def __init__(self, d, name):
        self.name = name
        self.driver = load(os.path.join(d, name, "driver.json"))
        self.critest = {}
        for f, _ in CRITEST:
            self.critest[f] = load(os.path.join(d, name, "critest", f + ".json"))
        for key in ("idle", "sequential", "concurrent", "memory"):
            if key not in self.driver:
                die(f"{name}/driver.json has no '{key}'")

    def lat(self, kind, field):
        return [s[field] for s in self.driver[kind]]

    def mem_at(self, pods):
        for m in self.driver["memory"]:
            if m["pods"] == pods:
                return m
        die(f"{self.name}: no memory sample at {pods} pods")

    def critest_ops(self, f):
        data = self.critest[f]
        out = []
        for i, op in enumerate(data["operationsNames"]):
            ms = [p["operationsDurationsNs"][i] / 1e6 for p in data["datapoints"] if len(p["operationsDurationsNs"]) > i]
            if not ms:
                die(f"{self.name}: critest {f} has no samples of {op}")
            out.append((op, ms))
        return out


def per_pod(m, key, field):
    procs = m[key]
    return sum(p[field] for p in procs) / 1024 / m["pods"] if m["pods"] and procs else None


def table(run, rts, with_plots):
    ref = rts.get("containerd")
    ours = [r for r in ("berth", "berth-cni") if r in rts]
    cols = [r for r in ("berth", "berth-cni", "containerd") if r in rts]
    head = ["", *[NAMES[c] for c in cols]]
    if ref:
        head += [f"{NAMES[r]} / containerd" for r in ours]
    rows = []

    def row(label, fn):
        vals = {c: fn(rts[c]) for c in cols}
        cells = [label]
        for c in cols:
            v = vals[c]
            cells.append(" · ".join(fmt(x) for x in v) if isinstance(v, tuple) else fmt(v))
        if ref:
            for r in ours:
                a, b = vals[r], vals["containerd"]
                if isinstance(a, tuple):
                    cells.append(" · ".join(ratio(x, y) for x, y in zip(a, b)))
                else:
                    cells.append(ratio(a, b))
        rows.append(cells)

    def section(title):
        rows.append([f"**{title}**"] + [""] * (len(head) - 1))

    pods, conc = run["pods"], run["concurrent"]
    section("latency, ms: p50 · p99")
    for kind, what in (("sequential", f"{pods} one after another"), ("concurrent", f"{conc} at once, {run['rounds']} rounds")):
        row(f"pod ready (RunPodSandbox), {what}", lambda r, k=kind: (pct(r.lat(k, "pod_ms"), 50), pct(r.lat(k, "pod_ms"), 99)))
        row(
            f"container create + start, {what}",
            lambda r, k=kind: (pct(r.lat(k, "container_ms"), 50), pct(r.lat(k, "container_ms"), 99)),
        )
    section(f"critest {run.get('critest', '')} --benchmark, ms: p50 · p90")
    first = rts[cols[0]]
    for f, what in CRITEST:
        for i, (op, _) in enumerate(first.critest_ops(f)):
            row(f"{op} ({what} lifecycle)", lambda r, f=f, i=i: (pct(r.critest_ops(f)[i][1], 50), pct(r.critest_ops(f)[i][1], 90)))
    few = min(10, pods)
    section("memory, MiB")
    row("daemon RSS, idle", lambda r: r.driver["idle"]["daemon"]["rss_kb"] / 1024)
    row(f"daemon RSS, {few} pods", lambda r: r.mem_at(few)["daemon"]["rss_kb"] / 1024)
    if pods != few:
        row(f"daemon RSS, {pods} pods", lambda r: r.mem_at(pods)["daemon"]["rss_kb"] / 1024)
    row(f"shim RSS per pod ({few} pods)", lambda r: per_pod(r.mem_at(few), "shims", "rss_kb"))
    row(f"shim PSS per pod ({few} pods)", lambda r: per_pod(r.mem_at(few), "shims", "pss_kb"))
    row(f"shim anonymous RSS per pod ({few} pods)", lambda r: per_pod(r.mem_at(few), "shims", "anon_kb"))
    # berth pins pod namespaces itself: no pause process (None prints as "–").
    row(f"pause process PSS per pod ({few} pods)", lambda r: per_pod(r.mem_at(few), "infra", "pss_kb"))
    row(
        f"daemon + shims + pause PSS, {pods} pods",
        lambda r: (r.mem_at(pods)["daemon"]["pss_kb"] + sum(p["pss_kb"] for p in r.mem_at(pods)["shims"] + r.mem_at(pods)["infra"])) / 1024,
    )
    probed = [c for c in cols if "probes" in rts[c].driver]
    if probed:
        p0 = rts[probed[0]].driver["probes"]
        section(f"exec probes: ExecSync `true` in each of {p0['pods']} containers every second for {p0['secs']} s")

        def per_1000(r, *keys):
            p = r.driver.get("probes")
            return sum(p[k] for k in keys) * 1000 / p["probes"] if p and p["probes"] else None

        def exec_ms(r, q):
            p = r.driver.get("probes")
            return pct(p["exec_ms"], q) if p else None

        row("ExecSync latency, ms: p50 · p99", lambda r: (exec_ms(r, 50), exec_ms(r, 99)))
        row("daemon CPU-s per 1000 probes", lambda r: per_1000(r, "daemon_cpu_s"))
        row("shims CPU-s per 1000 probes (with their reaped children: exec processes, runc)", lambda r: per_1000(r, "shims_cpu_s"))
        row("daemon + shims CPU-s per 1000 probes", lambda r: per_1000(r, "daemon_cpu_s", "shims_cpu_s"))
    pulls = [c for c in cols if "pull" in rts[c].driver]
    if pulls:
        image = rts[pulls[0]].driver["pull"]["image"]
        section(f"cold pull + unpack of {image}")
        row("wall time, s", lambda r: r.driver["pull"]["ms"] / 1000 if "pull" in r.driver else None)
        row("daemon peak RSS, MiB", lambda r: r.driver["pull"]["peak_rss_kb"] / 1024 if "pull" in r.driver else None)
        row(
            "daemon peak RSS minus RSS before the pull, MiB",
            lambda r: (r.driver["pull"]["peak_rss_kb"] - r.driver["pull"].get("rss_before_kb", 0)) / 1024 if "pull" in r.driver else None,
        )

    out = [
        f"Measured {run['date']} by `hack/bench.sh`{' --ci' if run.get('ci') else ''} at berth {run['commit']}: "
        f"{run['cpus']} CPUs, {run['mem_mib']} MiB, kernel {run['kernel']}, load average {run['load']} at the start; "
        f"containerd {run.get('containerd', '?')} + runc {run.get('runc', '?')} with CNI bridge/host-local/portmap. "
        "Ratios below 1 favour berth."
        + (" Plots: `bench-results/latency.png`, `bench-results/memory.png`." if with_plots else ""),
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |",
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def plots(d, run, rts):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"berth": "tab:blue", "berth-cni": "tab:cyan", "containerd": "tab:red"}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = [
        ("sequential", "pod_ms", f"pod ready (RunPodSandbox), {run['pods']} sequential"),
        ("sequential", "container_ms", "container create + start, sequential"),
        ("concurrent", "pod_ms", f"pod ready, {run['concurrent']} concurrent × {run['rounds']}"),
        ("concurrent", "container_ms", "container create + start, concurrent"),
    ]
    for ax, (kind, field, title) in zip(axes.flat, panels):
        for name, r in rts.items():
            v = sorted(r.lat(kind, field))
            if not v:
                continue
            y = [(i + 1) / len(v) for i in range(len(v))]
            ax.step(v, y, where="post", label=f"{NAMES[name]} (p50 {fmt(pct(v, 50))} ms)", color=colors[name])
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        ax.set_ylabel("fraction of operations ≤ x")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(f"berth vs containerd latency (CDF), {run['date']}")
    fig.tight_layout()
    fig.savefig(os.path.join(d, "latency.png"), dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in rts.items():
        mem = sorted(r.driver["memory"], key=lambda m: m["pods"])
        x = [m["pods"] for m in mem]
        axes[0].plot(x, [m["daemon"]["rss_kb"] / 1024 for m in mem], "o-", label=NAMES[name], color=colors[name])
        total = [(m["daemon"]["pss_kb"] + sum(p["pss_kb"] for p in m["shims"] + m["infra"])) / 1024 for m in mem]
        axes[1].plot(x, total, "o-", label=NAMES[name], color=colors[name])
    axes[0].set_title("daemon RSS")
    axes[1].set_title("daemon + shims + pause processes, PSS")
    for ax in axes:
        ax.set_xlabel("running pods (one container each)")
        ax.set_ylabel("MiB")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"berth vs containerd memory, {run['date']}")
    fig.tight_layout()
    fig.savefig(os.path.join(d, "memory.png"), dpi=100)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--plots", action="store_true")
    ap.add_argument("--markdown")
    a = ap.parse_args()
    run = load(os.path.join(a.dir, "run.json"))
    rts = {n: Runtime(a.dir, n) for n in run["runtimes"].split(",")}
    text = table(run, rts, a.plots)
    sys.stdout.write(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text)
    if a.plots:
        plots(a.dir, run, rts)


if __name__ == "__main__":
    main()
