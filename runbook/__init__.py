"""mail-runbook: a mail server guide as parameterised, auditable Jupyter notebooks."""

import sys

# papermill -> nbformat -> jsonschema compiles an IRI grammar on import (1.6 s here) only to
# offer an "iri" format check that notebook validation never uses: every `runbook run`
# would pay for it. jsonschema skips that check when the module cannot be imported.
sys.modules.setdefault("rfc3987_syntax", None)
