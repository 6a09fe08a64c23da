"""ZeRO tooling for infrastructure teams: validation before launch, a memory/speed estimator, resizing resumes."""
