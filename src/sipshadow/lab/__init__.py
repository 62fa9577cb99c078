"""The lab: SIPp, Kamailio and ALG drivers on one child-process shell, the test bed, the experiment."""
