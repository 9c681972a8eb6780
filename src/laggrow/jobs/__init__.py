"""The jobs the commands run, above pool/, stack/, analysis/ and report/: a training run
(`training`), one growth written as a new run (`growing`), a run's loss on a corpus
(`evaluation`), a token directory written (`tokenizing`) and the stages of `laggrow run`
(`experiment`)."""
