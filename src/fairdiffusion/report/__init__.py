"""The paper's tables (`fairdiff table`) and figures (`fairdiff figure`), built from the tidy
metric CSVs, training logs and sample folders that the earlier stages write."""
