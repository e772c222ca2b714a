"""Step 5: the drivers. :func:`.audit.audit` (conditions -> AuditResult) and
:func:`.protocol.run_protocol` (a pipeline of named phases -> ProtocolReport).
"""
