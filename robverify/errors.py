"""The one exception type the command line turns into a one-line message and exit code 2."""


class RobverifyError(Exception):
    """Bad input or an unsupported request. The message is one line, shown to the user as is."""


class SoundnessError(RuntimeError):
    """An internal contradiction (verified and falsified at once). Always a bug; never caught."""
