"""The Linux adapters of the data planes: TUN devices, XFRM and route netlink, socket buffers.

The only modules of ``ikev1d.dataplane`` that touch the kernel; they import
nothing of the daemon.
"""
