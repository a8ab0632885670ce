"""The embedded simulation runtime: a virtual clock, a discrete-event loop, an in-process bus and a
simulated cloud, hosting the same service cores as the live runtime. No servers, no wall clock."""
