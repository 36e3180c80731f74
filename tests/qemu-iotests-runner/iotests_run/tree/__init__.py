"""The QEMU tree: where its source and build are (`QemuTree`), its tests and groups (`Catalog`),
what each test declares it applies to, which protocol services this machine has, and the environment
check gives a test. Pure facts about the tree and the machine; nothing here runs a test."""
