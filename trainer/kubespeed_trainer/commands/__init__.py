"""The trainer's commands (`kubespeed train`, `launch`, `export`, `prepare`, `sample`), each a module with `main(argv) -> int`."""
