"""The real ``momedo`` console script against a real ``momedod`` process (issue acceptance 1)."""

from __future__ import annotations

import json
import secrets
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from support import VENV_BIN, DaemonProcess, admin_call, free_port

from momedod.protocol.userid import normalize


def momedo_argv(profile: Path, *args: str, json_out: bool = False) -> list[str]:
    cmd = [str(VENV_BIN / "momedo"), "--profile", str(profile)]
    if json_out:
        cmd.append("--json")
    return [*cmd, *args]


def momedo(profile: Path, *args: str, json_out: bool = False) -> subprocess.CompletedProcess[str]:
    argv = momedo_argv(profile, *args, json_out=json_out)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def at_once(*argvs: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands (other users' profiles) side by side: each ``momedo`` spends
    ~1 s starting Python and its imports."""
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]
    results = []
    try:
        for argv, proc in zip(argvs, procs, strict=True):
            out, err = proc.communicate(timeout=60)
            results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def momedoctl(proc: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(VENV_BIN / "momedoctl"), "-c", str(proc.config_path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    return res.stdout


def test_cli_two_users_send_recv_and_server_sees_no_plaintext(tmp_path):
    proc = DaemonProcess(tmp_path, free_port())
    proc.start()
    marker = "CLI-MARKER-" + secrets.token_hex(8)
    try:
        users = {}
        names = ("Alice", "Bob")
        links = [admin_call(proc.socket, "user.add", name=n)["invite"]["link"] for n in names]
        enrolls = [
            momedo_argv(tmp_path / n.lower(), "enroll", link, "--name", n, json_out=True)
            for n, link in zip(names, links, strict=True)
        ]
        for name, res in zip(names, at_once(*enrolls), strict=True):
            out = json.loads(ok(res))
            users[name] = (tmp_path / name.lower(), out["user_id"])
            assert out["qr"].startswith("MOMEDO1:" + normalize(out["user_id"]))
        (alice, a_id), (bob, b_id) = users["Alice"], users["Bob"]

        ok(momedo(alice, "send", b_id, f"hello {marker}"))
        ok(momedo(alice, "send", b_id, "second"))
        out = ok(momedo(bob, "recv"))
        assert out.splitlines() == [
            f"{a_id} (device 1): hello {marker}",
            f"{a_id} (device 1): second",
        ]
        assert ok(momedo(bob, "recv")) == ""  # acked

        ok(momedo(bob, "send", a_id, f"reply {marker}"))
        lines = ok(momedo(alice, "recv", "--wait", "0.2", json_out=True)).splitlines()
        got = [json.loads(x) for x in lines]
        assert [(g["type"], g["text"]) for g in got] == [("message", f"reply {marker}")]

        contacts = json.loads(ok(momedo(alice, "contacts", json_out=True)))["contacts"]
        assert [(c["user_id"], c["level"]) for c in contacts] == [(b_id, "unverified")]

        va, vb = (
            json.loads(ok(res))
            for res in at_once(
                momedo_argv(alice, "verify", b_id, json_out=True),
                momedo_argv(bob, "verify", a_id, json_out=True),
            )
        )
        assert va["safety_number"] == vb["safety_number"]
        assert va["their_qr"] == vb["my_qr"] and vb["their_qr"] == va["my_qr"]
        ok(momedo(alice, "trust", b_id, "--qr", va["their_qr"]))
        contacts = json.loads(ok(momedo(alice, "contacts", json_out=True)))["contacts"]
        assert contacts[0]["level"] == "verified"

        devs = json.loads(ok(momedo(alice, "devices", json_out=True)))
        assert [d["device_id"] for d in devs["devices"]] == [1]
        assert devs["signed_by_my_identity"] and devs["notices"] == []
        who = json.loads(ok(momedo(alice, "whoami", json_out=True)))
        assert who["user_id"] == a_id and who["device_id"] == 1
    finally:
        proc.stop()
    log = proc.log_path.read_bytes()
    assert marker.encode() not in log
    for path in proc.state.rglob("*"):
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), f"plaintext marker in {path}"


def test_cli_key_change_blocks_send_until_trust(tmp_path):
    proc = DaemonProcess(tmp_path, free_port())
    proc.start()
    try:
        out = admin_call(proc.socket, "user.add", name="Alice")
        ok(momedo(tmp_path / "alice", "enroll", out["invite"]["link"]))
        a_id = out["user"]["user_id"]
        out = admin_call(proc.socket, "user.add", name="Bob")
        b_id = out["user"]["user_id"]
        ok(momedo(tmp_path / "bob", "enroll", out["invite"]["link"]))
        ok(momedo(tmp_path / "alice", "send", b_id, "hi"))

        link = admin_call(proc.socket, "user.invite", user_id=b_id)["invite"]["link"]
        res = momedo(tmp_path / "bob2", "enroll", link)
        assert "already had an identity key" in ok(res) + res.stderr

        res = momedo(tmp_path / "alice", "send", b_id, "secret")
        assert res.returncode == 3 and "CHANGED" in res.stderr and "momedo trust" in res.stderr
        res = momedo(tmp_path / "alice", "send", b_id, "secret")
        assert res.returncode == 3
        contacts = json.loads(ok(momedo(tmp_path / "alice", "contacts", json_out=True)))
        assert contacts["contacts"][0]["key_changed"] is True
        ok(momedo(tmp_path / "alice", "trust", b_id))
        ok(momedo(tmp_path / "alice", "send", b_id, "after trust"))
        assert ok(momedo(tmp_path / "bob2", "recv")).splitlines() == [
            f"{a_id} (device 1): after trust"
        ]
    finally:
        proc.stop()


def test_cli_refuses_profile_readable_by_others(tmp_path):
    prof = tmp_path / "p"
    prof.mkdir(mode=0o755)
    prof.chmod(0o755)
    res = momedo(prof, "whoami")
    assert res.returncode == 1 and "chmod 700" in res.stderr


def test_cli_listen_prints_messages_as_they_arrive(tmp_path):
    import signal
    import time

    proc = DaemonProcess(tmp_path, free_port())
    proc.start()
    try:
        ids, enrolls = {}, []
        for name in ("alice", "bob"):
            out = admin_call(proc.socket, "user.add", name=name)
            enrolls.append(momedo_argv(tmp_path / name, "enroll", out["invite"]["link"]))
            ids[name] = out["user"]["user_id"]
        for res in at_once(*enrolls):
            ok(res)
        listener = subprocess.Popen(
            [str(VENV_BIN / "momedo"), "--profile", str(tmp_path / "bob"), "--json", "listen"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.0)
            ok(momedo(tmp_path / "alice", "send", ids["bob"], "live one"))
            ok(momedo(tmp_path / "alice", "send", ids["bob"], "live two"))
            assert listener.stdout is not None
            lines: list[dict[str, object]] = []
            while len(lines) < 2:  # notices (e.g. "pinned ... first use") are lines too
                event = json.loads(listener.stdout.readline())
                if event["type"] == "message":
                    lines.append(event)
            assert [x["text"] for x in lines] == ["live one", "live two"]
            assert lines[0]["from"] == ids["alice"]
        finally:
            listener.send_signal(signal.SIGINT)
            _out, err = listener.communicate(timeout=20)
        assert listener.returncode in (0, 130), err
        assert "Traceback" not in err
        assert ok(momedo(tmp_path / "bob", "recv")) == ""  # both were stored and acked
    finally:
        proc.stop()


def test_cli_link_tablet_and_remove_it(tmp_path):
    proc = DaemonProcess(tmp_path, free_port())
    proc.start()
    try:
        ids, enrolls = {}, []
        for name in ("Alice", "Bob"):
            link = admin_call(proc.socket, "user.add", name=name)["invite"]["link"]
            enrolls.append(momedo_argv(tmp_path / name.lower(), "enroll", link, json_out=True))
        for name, res in zip(("Alice", "Bob"), at_once(*enrolls), strict=True):
            ids[name] = json.loads(ok(res))["user_id"]
        alice, bob, tablet = tmp_path / "alice", tmp_path / "bob", tmp_path / "tablet"
        a_id, b_id = ids["Alice"], ids["Bob"]
        ok(momedo(bob, "send", a_id, "hi alice"))
        ok(momedo(alice, "recv"))

        cmd = [str(VENV_BIN / "momedo"), "--profile", str(alice), "--json", "link", "new"]
        new = subprocess.Popen(
            [*cmd, "--wait", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert new.stdout is not None
            first = json.loads(new.stdout.readline())
            assert first["type"] == "link_code" and first["code"].startswith("MOMEDO-LINK1:")
            res = momedo(tablet, "link", "accept", first["code"], "--name", "tab", json_out=True)
            acc = json.loads(ok(res).splitlines()[-1])
            rest, err = new.communicate(timeout=60)
        finally:
            if new.poll() is None:
                new.kill()
                new.wait()
        assert new.returncode == 0, err
        assert json.loads(rest.splitlines()[-1])["linked_device_id"] == 2
        assert acc["device_id"] == 2 and acc["user_id"] == a_id
        who = json.loads(ok(momedo(tablet, "whoami", json_out=True)))
        assert (
            who["manager"] is False and who["identity_fingerprint"] == acc["identity_fingerprint"]
        )

        ok(momedo(bob, "send", a_id, "to both"))
        assert ok(momedo(alice, "recv")).splitlines() == [f"{b_id} (device 1): to both"]
        assert ok(momedo(tablet, "recv")).splitlines() == [f"{b_id} (device 1): to both"]
        ok(momedo(alice, "send", b_id, "from phone"))
        assert ok(momedo(bob, "recv")).splitlines() == [f"{a_id} (device 1): from phone"]
        assert ok(momedo(tablet, "recv")).splitlines() == [f"me (device 1) → {b_id}: from phone"]

        devs = json.loads(ok(momedo(alice, "devices", json_out=True)))
        assert [d["device_id"] for d in devs["devices"]] == [1, 2]
        ok(momedo(alice, "devices", "remove", "2"))
        ok(momedo(bob, "send", a_id, "after removal"))
        assert ok(momedo(alice, "recv")).splitlines() == [f"{b_id} (device 1): after removal"]
        assert ok(momedo(tablet, "recv")) == ""
    finally:
        proc.stop()


def _day_after_tomorrow() -> str:
    return (datetime.now(UTC) + timedelta(days=2)).strftime("%a")


def test_cli_urgent_messages_and_the_quiet_hours_status(tmp_path):
    proc = DaemonProcess(tmp_path, free_port())
    proc.start()
    try:
        users, enrolls = {}, []
        for name in ("Alice", "Bob"):
            link = admin_call(proc.socket, "user.add", name=name)["invite"]["link"]
            prof = tmp_path / name.lower()
            enrolls.append(momedo_argv(prof, "enroll", link, "--name", name, json_out=True))
        for name, res in zip(("Alice", "Bob"), at_once(*enrolls), strict=True):
            users[name] = (tmp_path / name.lower(), json.loads(ok(res))["user_id"])
        (alice, a_id), (bob, b_id) = users["Alice"], users["Bob"]
        # The operator: Bob has quiet hours except one minute a week, on the day after
        # tomorrow (so the test never runs inside it); only Alice may send
        # urgent messages.
        assert "No quiet-hours policies" in ok(momedoctl(proc, "quiet", "list"))
        window = f"{_day_after_tomorrow()} 00:00-00:01 UTC"
        out = ok(momedoctl(proc, "quiet", "set", "staff", window, "--user", b_id))
        assert out == f"Policy staff: working window {window}.\n"
        assert ok(momedoctl(proc, "urgent", "user", a_id, "on")) == (
            f"{a_id} may now send urgent messages.\n"
        )
        listed = ok(momedoctl(proc, "quiet", "list")).splitlines()
        assert listed[0].startswith(f"staff: {window} (")
        assert listed[1] == f"  applies to: {b_id}"
        assert listed[-1] == f"May send urgent messages: {a_id}"
        bad = momedoctl(proc, "quiet", "set", "x", "Mon-Fri 7-18 Europe/Berlin")
        assert bad.returncode != 0 and "expected a time HH:MM" in bad.stderr

        ok(momedo(alice, "send", b_id, "minutes of the meeting"))
        ok(momedo(alice, "send", "--urgent", b_id, "fire drill at 8"))
        assert ok(momedo(bob, "recv")).splitlines() == [
            f"{a_id} (device 1): minutes of the meeting",
            f"URGENT {a_id} (device 1): fire drill at 8",
        ]
        res = momedo(alice, "recv")
        assert res.returncode == 0 and res.stderr.count("delivered to their phone after") == 1
        refused = momedo(bob, "send", "--urgent", a_id, "me too")
        assert refused.returncode != 0 and "may not send urgent" in refused.stderr
        # Bob's own setting adds quiet time; the operator sees it.
        ok(momedo(bob, "quiet", "set", "Mon-Fri 08:00-16:00 Europe/Berlin"))
        listed = ok(momedoctl(proc, "quiet", "list"))
        assert f"user:{normalize(b_id)}: Mon-Fri 08:00-16:00 Europe/Berlin" in listed
        ok(momedo(bob, "quiet", "clear"))
        assert "user:" not in ok(momedoctl(proc, "quiet", "list"))
    finally:
        proc.stop()
