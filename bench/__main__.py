from bench.cli import main

# Guarded: a pool worker (bench.executor, spawned) imports the main module again; it must not
# run the command line a second time.
if __name__ == "__main__":
    main()
