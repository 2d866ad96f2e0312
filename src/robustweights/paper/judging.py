"""``robustweights judge``: claims of rows recorded in several reproduce folders, judged at once.

    robustweights judge runs/window-1 runs/window-2 --out runs/judged
    rw.paper.judging.judge_recorded(["runs/window-1", "runs/window-2"], out="runs/judged")

A *recorded folder* is what a reproduce run leaves without its checkpoints
(what a GPU window sends back): ``reproduce.json``,
``train/<row>/metrics.jsonl`` and ``sweeps/<row>/`` (``sweep.json``,
``results.json``). A row is *recorded* there when its sweep finished. Rows of
one experiment, scale and preset, recorded in different folders (one GPU
window each), are judged by the rules :func:`reproduce` uses
(:func:`robustweights.paper.experiments.judge`) on the same inputs, read back
from those files: no checkpoint is needed or loaded. The preset may differ only
in keys that change how or where rows ran, not what they compute
(:data:`FREE`: device, data folder, checkpoints, rows, rows at once, CUDA
graph, compile); any other difference is refused. A row recorded twice is
judged from its later recording (the line printed and ``judged.json`` say
which).

The out folder gets ``claims.json`` (the same table as reproduce's, which
``robustweights report --claims`` reads), ``claims.md`` (that table, then
where each row came from: folder, date, commit, device, epochs) and
``judged.json`` (the same, with the preset and the inputs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .experiments import MARKER, judge
from .presets import EXPERIMENTS, PRESETS, RESUMABLE, ROWS, resolve_preset, with_defaults
from ..errors import UserError
from ..results import claims_markdown
from ..runs import check_writable, git_commit, now, write_text

__all__ = ["FREE", "RECORD_ORDER", "judge_recorded", "next_row", "read_folder", "summary"]

# Keys of a preset that change how or where rows ran, not what they compute: rows judged together
# may differ in these (a row trained eagerly after the CUDA graph failed is the same recipe).
FREE = RESUMABLE + ("rows", "cuda_graph", "compile")
# The order in which GPU windows record the paper preset's rows, 500 epochs each (issue 24): claim 5
# first (stoch-mult), then claim 2's binarized network (stoch-sign), then claim 1's float and sign
# rows to judge both BinaryConnect networks against.
RECORD_ORDER = ("stoch-mult", "stoch-sign", "identity", "sign")


# ---------------------------------------------------------------------------
# Reading a recorded folder
# ---------------------------------------------------------------------------


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing ({what})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is corrupt ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is corrupt (not UTF-8 text)") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror})") from None


def _read_record(folder: Path) -> dict:
    """A folder's ``reproduce.json``, checked for what judging reads."""
    record = _read_json(folder / MARKER, "a reproduce folder's record")
    ok = (
        isinstance(record, dict)
        and record.get("experiment") in EXPERIMENTS
        and isinstance(record.get("scale"), str)
        and isinstance(record.get("preset"), dict)
        and isinstance(record.get("rows"), list)
        and all(r in ROWS for r in record["rows"])
        and isinstance(record.get("sessions"), list)
        and all(isinstance(s, dict) for s in record["sessions"])
    )
    if not ok:
        raise UserError(
            f"{folder / MARKER} is not a reproduce record (an object with experiment, scale, "
            "preset, rows and sessions)"
        )
    return record


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _read_sweep(folder: Path) -> dict | None:
    """``sweep.json`` with ``rows`` (what :func:`robustweights.sweeps.run_sweep` returned), or None
    while the sweep has not finished."""
    prov = _read_json(folder / "sweep.json", "a sweep's provenance")
    if not isinstance(prov, dict) or not _number(prov.get("baseline_error")):
        raise UserError(f"{folder}/sweep.json is not a sweep of the error (no baseline_error)")
    if prov.get("end") is None:
        return None
    rows = _read_json(folder / "results.json", "a finished sweep's rows")
    good = (
        isinstance(rows, list)
        and rows
        and all(
            isinstance(r, dict)
            and isinstance(r.get("distortion"), str)
            and _number(r.get("value"))
            and _number(r.get("error"))
            and (r.get("effective_bits") is None or _number(r["effective_bits"]))
            for r in rows
        )
    )
    if not good:
        raise UserError(
            f"{folder}/results.json is not a sweep's rows (a non-empty list of objects with "
            "distortion, value and error)"
        )
    return {**prov, "rows": rows}


def _trained(folder: Path, epochs: int) -> dict:
    """What reproduce's training of a row returned, from its ``metrics.jsonl``."""
    path = folder / "metrics.jsonl"
    text = _read_json_lines(path)
    if len(text) != epochs:
        raise UserError(f"{path} holds {len(text)} epochs, the preset {epochs}")
    last = text[-1]
    best = last.get("best_epoch") is not None  # the network of the best validation epoch
    return {
        "test_error": last.get("best_test_error" if best else "test_error", math.nan),
        "epochs": len(text),
        "train_seconds": sum(h["seconds"] for h in text),
        "test_weights": last.get("test_weights"),
        "test_error_stored_bn": last.get("test_error_stored_bn"),
        "best_epoch": last.get("best_epoch"),
    }


def _read_json_lines(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path} is missing (the row's training record)") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is corrupt (not UTF-8 text)") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror})") from None
    try:
        rows = [json.loads(line) for line in lines]
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is corrupt ({e.msg})") from None
    if not rows or not all(isinstance(r, dict) and _number(r.get("seconds")) for r in rows):
        raise UserError(f"{path} is not a training record (one object an epoch)")
    return rows


def _session(record: dict, sweep: dict) -> tuple[dict, list[dict]]:
    """The session that finished the sweep (the last to start before its end) and every session up
    to it (those that trained the row)."""
    before = [s for s in record["sessions"] if str(s.get("start")) <= str(sweep["end"])]
    before = before or record["sessions"][-1:] or [{}]
    return before[-1], before


def read_folder(
    folder: "str | Path", record: dict | None = None
) -> tuple[dict, dict[str, dict], list[str]]:
    """``(reproduce.json, {row: recorded row}, notes)`` of one recorded folder: each row whose
    sweep finished, with its sweep, training figures and provenance; a note for each row listed but
    not recorded. A missing or corrupt file of a recorded row is refused (one line)."""
    folder = Path(folder)
    record = record or _read_record(folder)
    epochs = with_defaults(record["preset"]).get("epochs")
    rows, notes = {}, []
    for row in record["rows"]:
        if not (folder / "sweeps" / row / "sweep.json").is_file():
            notes.append(f"{folder}: row {row} was not swept (not recorded)")
            continue
        sweep = _read_sweep(folder / "sweeps" / row)
        if sweep is None:
            notes.append(f"{folder}: the sweep of row {row} did not finish (not recorded)")
            continue
        session, sessions = _session(record, sweep)
        trained = _trained(folder / "train" / row, epochs)
        rows[row] = {
            "row": row,
            "folder": folder,
            "record": record,
            "sweep": sweep,
            "trained": trained,
            "provenance": _provenance(row, folder, record, sweep, trained, session, sessions),
        }
    return record, rows, notes


def _provenance(row, folder, record, sweep, trained, session, sessions) -> dict:
    """Where a recorded row came from: folder, when its sweep ended, the code that trained and
    swept it, the device, the epochs and how the step ran."""
    preset = with_defaults(record["preset"])
    commits = [s.get("git_commit") for s in sessions] + [sweep.get("git_commit")]
    step = "compiled" if preset["compile"] else "CUDA graph" if preset["cuda_graph"] else "eager"
    at_once = min(preset["rows_at_once"], len(record["rows"]))
    return {
        "row": row,
        "folder": str(folder),
        "recorded": sweep["end"],
        "commits": list(dict.fromkeys(str(c) for c in commits if c)),
        "device": sweep.get("device"),
        "torch": sweep.get("torch"),
        "machine": session.get("machine"),
        "epochs": trained["epochs"],
        "best_epoch": trained["best_epoch"],
        "test_error": trained["test_error"],
        "step": step + (f", {at_once} rows at once" if at_once > 1 else ""),
        "command": session.get("command"),
    }


# ---------------------------------------------------------------------------
# Collecting rows across folders
# ---------------------------------------------------------------------------


def recorded_folders(folders) -> list[Path]:
    """The recorded folders named: each one holding ``reproduce.json``, or each subfolder of one
    that does not (a folder collecting windows, such as docs/results/reproduce-gpu/paper-500)."""
    if isinstance(folders, (str, Path)):
        folders = [folders]
    found = []
    for f in map(Path, folders):
        if not f.is_dir():
            raise UserError(f"{f} is not a folder; give reproduce out folders")
        if (f / MARKER).exists():
            found.append(f)
            continue
        inner = sorted(d for d in f.iterdir() if (d / MARKER).exists())
        if not inner:
            raise UserError(
                f"{f} holds no {MARKER}, nor does any folder in it: give reproduce out folders"
            )
        found += inner
    return list(dict.fromkeys(found))


def _check_same(first: tuple[Path, dict], folder: Path, record: dict) -> None:
    """Refuse a folder whose experiment, scale or preset (beyond :data:`FREE`) is another's."""
    f0, r0 = first
    what = f"`reproduce {r0['experiment']} --scale {r0['scale']}`"
    if (record["experiment"], record["scale"]) != (r0["experiment"], r0["scale"]):
        raise UserError(
            f"{folder} holds `reproduce {record['experiment']} --scale {record['scale']}`, "
            f"{f0} {what}: only rows of one experiment and scale are judged together"
        )
    a, b = with_defaults(r0["preset"]), with_defaults(record["preset"])
    diff = sorted(k for k in set(a) | set(b) if k not in FREE and a.get(k) != b.get(k))
    if diff:
        raise UserError(
            f"{folder} holds {what} with other settings than {f0} ({', '.join(diff)} differ): "
            "only rows of one preset are judged together"
        )


def collect(folders) -> dict:
    """Every row recorded in ``folders`` (see :func:`recorded_folders`), checked to be of one
    experiment, scale and preset: ``{experiment, scale, preset, rows: {row: recorded}, notes}``,
    the rows in the order a run of the scale's preset trains them."""
    records = {f: _read_record(f) for f in recorded_folders(folders)}
    first, rows, notes = next(iter(records.items())), {}, []
    for folder, record in records.items():  # every preset checked before any row is read
        _check_same(first, folder, record)
    for folder, record in records.items():
        _, found, said = read_folder(folder, record)
        notes += said
        for row, r in found.items():
            old = rows.get(row)
            if old is not None:  # the later recording (of equal dates, the one named later)
                keep = r if str(r["sweep"]["end"]) >= str(old["sweep"]["end"]) else old
                notes.append(
                    f"row {row} is recorded in {old['folder']} and {r['folder']}: judged from "
                    f"{keep['folder']} (the later, swept {keep['sweep']['end']})"
                )
                r = keep
            rows[row] = r
    if not rows:
        raise UserError(
            "no row is recorded in the folders given (a row needs its finished sweep under "
            "sweeps/<row>/ and its metrics under train/<row>/)"
        )
    experiment, scale = first[1]["experiment"], first[1]["scale"]
    default = PRESETS[scale].rows if scale in PRESETS else None
    order = (default.split(",") if default else []) + list(EXPERIMENTS[experiment]["rows"])
    order += list(ROWS)
    ordered = {row: rows[row] for row in dict.fromkeys(order) if row in rows}
    preset = {**with_defaults(first[1]["preset"]), "rows": ",".join(ordered)}
    return {
        "experiment": experiment,
        "scale": scale,
        "preset": preset,
        "rows": ordered,
        "notes": notes,
    }


# ---------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------


def _setting(experiment: str, preset: dict, rows: dict) -> str:
    """The claims' setting, as reproduce writes it (its data, network, budget and machine), each
    machine the rows ran on named once."""

    def once(values):
        return "; ".join(dict.fromkeys(str(v) for v in values))

    model = preset["imagenet_model"] if experiment == "imagenet" else preset["model"]
    return (
        f"{once(r['sweep'].get('data_description') for r in rows.values())}; "
        f"{model} width {float(preset['width']):g}; "
        f"{preset['epochs']} epochs, batch {preset['batch_size']}, {preset['loss']}, "
        f"{preset['preprocess']}, no augmentation; "
        + " / ".join(dict.fromkeys(str(r["provenance"]["machine"]) for r in rows.values()))
    )


def _imagenet_data(experiment: str, rows: dict) -> str | None:
    """What claim 4 is judged on, as reproduce says it: a given image folder; None for the small
    folders reproduce generated (``<out>/data``) or another experiment."""
    if experiment != "imagenet":
        return None
    r = next(iter(rows.values()))
    data_dir = with_defaults(r["record"]["preset"])["data_dir"]
    generated = str(Path(str(r["sweep"].get("checkpoint"))).parents[1] / "data")
    return None if data_dir in (None, generated) else f"image folder {data_dir}"


def judge_recorded(folders, out: "str | Path | None" = None, progress: bool = False) -> dict:
    """Judge the claims on the rows recorded in ``folders`` (see the module docstring) and, with
    ``out``, write ``claims.json``, ``claims.md`` and ``judged.json`` there (atomically).

    Returns ``{"claims", "rows": [provenance of each row], "notes", "experiment", "scale",
    "preset", "setting", "out"}``; ``progress`` prints the notes as they are found.
    """
    if out is not None:
        out = Path(out)
        if (out / MARKER).exists():
            raise UserError(
                f"out= {str(out)!r} is a reproduce folder (its claims are its own run's); "
                "choose another out="
            )
        check_writable(out)
    c = collect(folders)
    rows, experiment = c["rows"], c["experiment"]
    sweeps = {row: r["sweep"] for row, r in rows.items()}
    trained = {row: r["trained"] for row, r in rows.items()}
    setting = _setting(experiment, c["preset"], rows)
    claims = judge(
        experiment, c["preset"], sweeps, trained, setting, _imagenet_data(experiment, rows)
    )
    result = {
        **{k: c[k] for k in ("experiment", "scale", "preset", "notes")},
        "claims": claims,
        "rows": [r["provenance"] for r in rows.values()],
        "setting": setting,
        "out": out,
    }
    if progress:
        for note in c["notes"]:
            print(note, flush=True)
    if out is not None:
        _write(out, result, folders)
    return result


def _write(out: Path, result: dict, folders) -> None:
    if isinstance(folders, (str, Path)):
        folders = [folders]
    record = {
        **{k: result[k] for k in ("experiment", "scale", "preset", "setting", "rows", "notes")},
        "inputs": [str(f) for f in folders],
        "judged": now(),
        "git_commit": git_commit(),
    }
    # the claims first: they stand without the rest
    write_text(out / "claims.json", json.dumps(result["claims"], indent=2) + "\n")
    write_text(out / "claims.md", claims_markdown(result["claims"]) + "\n" + rows_markdown(result))
    write_text(out / "judged.json", json.dumps(record, indent=2) + "\n")


def rows_markdown(result: dict) -> str:
    """Where each judged row came from, as a Markdown table (then the notes)."""
    lines = [
        "Rows judged, each from the folder that recorded it (no checkpoint read):",
        "",
        "| row | folder | recorded | commit | device | epochs | step | test error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in result["rows"]:
        best = f" (best {p['best_epoch']})" if p["best_epoch"] is not None else ""
        cells = [
            p["row"],
            f"`{p['folder']}`",
            str(p["recorded"]).replace("T", " ")[:16] + " UTC",
            ", ".join(c[:7] for c in p["commits"]) or "unknown",
            f"{p['device']}, torch {p['torch']}",
            f"{p['epochs']}{best}",
            p["step"],
            f"{p['test_error']:.2%}",
        ]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in result["notes"]]) + "\n"


def summary(result: dict) -> str:
    """The claims and the rows judged, as lines of text (what ``robustweights judge`` prints)."""
    lines = [f"claims ({result['setting']}):"]
    lines += [f"  {c['claim']}. {c['verdict']:<22} {c['measured']}" for c in result["claims"]]
    lines += ["", "rows:"]
    lines += [
        f"  {p['row']:<11} {p['folder']}  {p['recorded']}  {', '.join(c[:7] for c in p['commits'])}"
        f"  {p['device']}  {p['epochs']} epochs"
        for p in result["rows"]
    ]
    if result["out"] is not None:
        lines += ["", f"claims: {result['out'] / 'claims.json'} (and claims.md, judged.json)"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The next row a GPU window records
# ---------------------------------------------------------------------------


def next_row(folder: "str | Path", order=RECORD_ORDER, scale: str = "paper") -> str | None:
    """The first row of ``order`` not yet recorded in ``folder``'s recorded folders with the
    ``scale`` preset of ``reproduce all`` (beyond :data:`FREE`: the paper's 500 epochs whole);
    None when every one is. A folder with no recorded folder in it (or none at all) records
    none."""
    folder = Path(folder)
    recorded = set()
    inner = sorted(d for d in folder.iterdir() if (d / MARKER).exists()) if folder.is_dir() else []
    want = with_defaults(resolve_preset(scale))
    for f in inner:  # (folders of other settings are not read further)
        record = _read_record(f)
        preset = with_defaults(record["preset"])
        same = all(preset.get(k) == v for k, v in want.items() if k not in FREE)
        if (record["experiment"], record["scale"]) == ("all", scale) and same:
            recorded |= set(read_folder(f, record)[1])
    return next((row for row in order if row not in recorded), None)
