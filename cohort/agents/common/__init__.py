"""What the amphora and distributor agents share: HTTPS server, commands, kernel plumbing, files, command line.

Each module owns one job: ``http`` the mutual-TLS server and router, ``proc`` running
commands and reading processes, ``net`` interfaces, sysctls and ARP, ``files`` atomic
file replacement, ``cli`` the common command line and the serve-until-signalled loop.
"""
