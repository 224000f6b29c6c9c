"""Scheduling: which greetings are owed (`planner`), claiming due rows and publishing their jobs
(`dispatch`), and the periodic jobs beat runs (`jobs`: plan, enqueue, recover, drain)."""
