"""The k best checkpoints of a run, as Lightning's `ModelCheckpoint(save_top_k=k)`
keeps its `best_k_models`: entries keyed by epoch, best first."""


class BestCheckpoints:
    """Decides which epochs' checkpoints `EarlyStoppingWithCheckpoint(keep_best=k)` keeps.

    Each entry is `{"value", "epoch", "path"}`. Names come from formatting a
    `filepath` whose placeholders may map two epochs to one name
    (`"m-{val_loss:.1f}.keras"` formats 0.42 and 0.44 alike): a new epoch
    whose name is that of a better kept file is not saved, so a better file is
    never overwritten by a worse one; a better epoch replaces the worse
    entry along with its file.
    """

    def __init__(self, keep_best, direction, kept=()):
        self.keep_best = keep_best
        self.direction = direction
        self.kept = [dict(entry) for entry in kept]

    def _key(self, entry):
        # Lower is better; ties keep the earlier epoch ahead.
        value = entry["value"] if self.direction == "min" else -entry["value"]
        return value, entry["epoch"]

    def plan(self, epoch, value, path):
        """`(kept, removed)` if this epoch's checkpoint is to be written to
        `path`: the entries to keep once it is, and the files to delete after;
        `None` where it is not among the best or would overwrite a better file."""
        entry = {"value": value, "epoch": epoch, "path": path}
        if len(self.kept) >= self.keep_best and self._key(entry) >= self._key(self.kept[-1]):
            return None
        if any(e["path"] == path and self._key(e) <= self._key(entry) for e in self.kept):
            return None
        ranked = sorted([e for e in self.kept if e["path"] != path] + [entry], key=self._key)
        kept, dropped = ranked[: self.keep_best], ranked[self.keep_best :]
        kept_paths = {e["path"] for e in kept}
        return kept, [e["path"] for e in dropped if e["path"] not in kept_paths]

    def collides(self, path):
        """Whether `path` names a file an entry already keeps."""
        return any(e["path"] == path for e in self.kept)
