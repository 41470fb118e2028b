"""Working in JupyterLab: `form` (the params form generated from the model), `approval` (the
Approve / Skip gate, progress and summaries), `session` (session folders and JupyterLab on
loopback). Only ever imported in interactive use: batch runs never load widgets.
"""
