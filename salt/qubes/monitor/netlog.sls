{#- netlog, dom0 part: turn the capture on in the capture qubes (seed SLS 1).
    sudo qubesctl state.show_sls qubes.monitor.netlog
    sudo qubesctl --show-output state.sls qubes.monitor.netlog
    The template part is netlog-template (docs/netlog.md). -#}
{%- from "qubes/monitor/map.jinja" import sysmon with context %}
{%- for vm in sysmon.netlog_pcap_sources %}

netlog-capture-{{ vm }}:
  qvm.features:
    - name: {{ vm }}
    # qvm-service {{ vm }} netpcap on
    - enable:
      - service.netpcap
{%- endfor %}
