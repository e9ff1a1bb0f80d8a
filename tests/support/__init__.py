"""Test servers on the loopback interface: a real S3 API (moto) and a fault-injecting proxy.

They are not part of the installed package; ``quadmix-stream bench remote`` uses them from a
source checkout.
"""
