"""The one pipeline every command uses: source -> fetch -> validate -> stores -> sinks."""
