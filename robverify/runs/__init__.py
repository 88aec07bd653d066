"""Runs: the tidy results schema, resumable run directories, the epsilon searches and the certify / sweep jobs
that commit their work chunk by chunk, and VERONA's result_df.csv."""
