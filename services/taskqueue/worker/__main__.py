from taskqueue.worker.cli import main

main()
