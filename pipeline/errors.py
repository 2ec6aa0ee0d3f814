"""Errors a user can fix; the CLI prints them plainly and exits with status 2."""


class PipelineError(Exception):
    """Base class for user-fixable failures."""


class ParamsError(PipelineError, ValueError):
    """params.yaml is missing, malformed or breaks a rule; the message names the key."""


class ContractError(PipelineError):
    """Input data break the data contract; the message names file, column, rule and row count."""


class StageError(PipelineError):
    """A stage cannot run as asked (e.g. a missing secret or a missing upstream output)."""
