"""Presentation, computing nothing: terminal tables and summaries (`tables`), PNG figures
(`figures`), report.md as pure text (`markdown`), and the files they end up in (`writer`)."""
