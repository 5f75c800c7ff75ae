"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero."""


class DcganError(Exception):
    """Base class: bad input or an unmet precondition, explained in the message."""

    exit_code = 1


class ParamsError(DcganError):
    """Invalid params.yaml or override: the message names the file and key."""

    exit_code = 2


class DataError(DcganError):
    """Missing, corrupt or unexpected data files: the message names the file."""


class DownloadError(DataError):
    """No mirror answered: possibly transient, worth a retry."""


class CheckpointError(DcganError):
    """A checkpoint that cannot be used with these params."""


class ParityError(DcganError):
    """The exported model disagrees with the torch model beyond the tolerance."""


class TrainingDiverged(DcganError):
    """A loss became NaN or Inf: training stopped, the last good checkpoint kept."""


class TrackingError(DcganError):
    """The MLflow tracking server did not answer (after MLflow's own retries): possibly transient."""


class AuthError(DcganError):
    """The MLflow server rejected the credentials (401) or the user's permission (403): never retried."""


class DiskError(DcganError):
    """A file could not be written (disk full, file too large, no permission): the earlier file is kept."""
