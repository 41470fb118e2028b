"""The services the guide sets up, as the named operations the stage notebooks call:
`preflight` (stage 00), `postfix` (stages 10-60, 90, 95; one module per stage) and `dovecot`
(stage 70). Each step reads the platform profile (`stage.platform`) for what differs.
"""
