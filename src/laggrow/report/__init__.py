"""Presentation, computing nothing: terminal tables and summaries (`tables`), PNG figures
(`figures`), report.md as pure text (`experiment_markdown` for `laggrow run`,
`stack_markdown` for `laggrow stack`), and the files they end up in (`writer`)."""
