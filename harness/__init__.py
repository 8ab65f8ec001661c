"""Running the programs as a user does, for the demo, the bench and the tests: child processes
whose JSON events are read as they come, warm starts from a fork server, and a REST client."""
