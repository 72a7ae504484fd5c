"""What a power cut could leave of the files in a directory, by the rules of ``fsync(2)``.

A killed process loses nothing the kernel already has (the page cache survives it), so a test that kills a
writer cannot see a missing ``flush`` or ``fsync``. After a power cut, by POSIX's promises:

* a file's bytes are those it had when an ``fsync`` of it returned; bytes written since (or still in the
  process's buffers) may be lost, wholly or in part: a file never fsynced may come back empty or partial;
* a directory's entries (a rename into it) are certain once an ``fsync`` of the directory returned; a rename
  since then may or may not have reached the disk (a journalling file system commits it whenever it likes), so
  a name may point at any file it was renamed to since the directory's last fsync.

`Journal` records those events while a process runs: installed, it wraps ``os.fsync``, ``os.replace`` and
``os.rename``; each fsync of a regular file copies the file's bytes at that moment into the journal's folder,
each fsync of the watched directory lists its entries (name -> inode), each rename into it records the inode
now under the name, and every event is a JSON line appended to ``journal.jsonl`` and flushed to the kernel (so
it survives a kill of the process; a line cut short by the kill is ignored). `crash_states` replays a journal:
for each point where the power could fail (before the first event and after each), every content each name in
the directory could have after a reboot: bytes, `UNSYNCED` (a file whose bytes never reached the disk) or
`ABSENT` (no such name).

Linux only (the bytes of an fsynced descriptor are read through ``/proc/self/fd``).
"""
import hashlib
import json
import os
import stat
from pathlib import Path

SUPPORTED = os.path.isdir("/proc/self/fd")


class Journal:
    """Record the durability events of writes into ``directory``; ``folder`` (elsewhere) holds the journal."""

    def __init__(self, directory, folder):
        self.directory = Path(directory)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        st = os.stat(self.directory)
        self.directory_id = (st.st_dev, st.st_ino)
        self.copies = 0
        self.events = []  # in this process: (kind, details) in order, for tests that check the order itself
        self._log = open(self.folder / "journal.jsonl", "a", encoding="utf-8")
        self._real = {name: getattr(os, name) for name in ("fsync", "replace", "rename")}
        entries = self._entries()  # what is there before: durable (a machine that boots finds it)
        copies = {ino: self._copy_bytes((self.directory / name).read_bytes()) for name, (ino, _) in entries.items()}
        self._record({"event": "start", "entries": entries, "copies": copies})

    def install(self, setattr=setattr):
        """Wrap ``os.fsync``, ``os.replace`` and ``os.rename`` (pass ``monkeypatch.setattr`` in a test)."""
        setattr(os, "fsync", self.fsync)
        setattr(os, "replace", self.replace)
        setattr(os, "rename", self.rename)
        return self

    # -- the wrapped calls ----------------------------------------------------------------------------------
    def fsync(self, fd):
        self._real["fsync"](fd)
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            watched = (st.st_dev, st.st_ino) == self.directory_id
            self.events.append(("fsync-dir", {"watched": watched}))
            if watched:
                self._record({"event": "fsync-dir", "entries": self._entries()})
        elif stat.S_ISREG(st.st_mode):
            with open(f"/proc/self/fd/{fd}", "rb") as fh:  # the file's bytes now, whatever the process buffers
                data = fh.read()
            where = Path(os.readlink(f"/proc/self/fd/{fd}")).parent
            self.events.append(("fsync-file", {"inode": st.st_ino, "size": len(data), "folder": where}))
            self._record({"event": "fsync-file", "inode": str(st.st_ino), "copy": self._copy_bytes(data)})

    def replace(self, src, dst, **kwargs):
        self._real["replace"](src, dst, **kwargs)
        self._renamed(src, dst)

    def rename(self, src, dst, **kwargs):
        self._real["rename"](src, dst, **kwargs)
        self._renamed(src, dst)

    def _renamed(self, src, dst):
        self.events.append(("rename", {"src": Path(os.fspath(src)), "dst": Path(os.fspath(dst))}))
        folder = os.stat(os.path.dirname(os.path.abspath(dst)))
        if (folder.st_dev, folder.st_ino) == self.directory_id:
            name = os.path.basename(dst)
            self._record({"event": "rename", "name": name, "file": self._identity(self.directory / name)})

    # -- helpers --------------------------------------------------------------------------------------------
    def _entries(self):
        """``{name: [inode, SHA-256 of its bytes now]}`` of the regular files in the directory."""
        entries = {}
        for name in os.listdir(self.directory):
            try:
                if stat.S_ISREG(os.lstat(self.directory / name).st_mode):
                    entries[name] = self._identity(self.directory / name)
            except FileNotFoundError:  # removed meanwhile (another writer's temporary file)
                continue
        return entries

    @staticmethod
    def _identity(path):
        """``[inode, SHA-256 of its bytes]``: inode numbers are reused, so the bytes tell which file had it."""
        with open(path, "rb") as fh:
            return [str(os.fstat(fh.fileno()).st_ino), hashlib.sha256(fh.read()).hexdigest()]

    def _copy_bytes(self, data):
        self.copies += 1
        name = f"{self.copies:06d}.bin"
        (self.folder / name).write_bytes(data)  # complete before the journal line that names it
        return name

    def _record(self, event):
        self._log.write(json.dumps(event) + "\n")
        self._log.flush()

    def close(self):
        self._log.close()


UNSYNCED, ABSENT = "unsynced", "absent"


def crash_states(folder):
    """``[(event, {name: set of possible contents})]``: after a power cut before the first event (``"start"``) and
    after each event of the journal in ``folder``, what each name of the directory could hold: its bytes,
    `UNSYNCED` (the file it names never had its bytes fsynced: empty or partial) or `ABSENT`."""
    folder = Path(folder)
    events = []
    with open(folder / "journal.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # cut short by a kill: the event did not finish
            events.append(json.loads(line))
    start = events[0]
    assert start["event"] == "start", start
    durable = dict(start["entries"])  # name -> [inode, sha256], as of the directory's last fsync
    since = []  # (name, [inode, sha256]) renamed into the directory since then, in order
    contents = dict(start["copies"])  # inode -> copy of the bytes its last fsync made durable

    def content(file):
        """The durable bytes of ``file`` ([inode, sha256 of its bytes when named]), if its fsync kept them."""
        if file is None:
            return ABSENT
        ino, digest = file
        if ino in contents:
            data = (folder / contents[ino]).read_bytes()
            if hashlib.sha256(data).hexdigest() == digest:  # not an older file that had the same inode
                return data
        return UNSYNCED

    def view():
        names = set(durable) | {name for name, _ in since}
        return {name: {content(durable.get(name))} | {content(file) for renamed, file in since if renamed == name}
                for name in names}

    states = [("start", view())]
    for event in events[1:]:
        if event["event"] == "fsync-file":
            contents[event["inode"]] = event["copy"]
        elif event["event"] == "fsync-dir":
            durable, since = dict(event["entries"]), []
        elif event["event"] == "rename":
            since.append((event["name"], event["file"]))
        states.append((event["event"], view()))
    return states
